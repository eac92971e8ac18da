package store

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Credentials. The store never keeps a secret, only its SHA-256: the
// secrets are 192 or 256 random bits, so a plain hash is enough (no salt or slow
// hash is needed against guessing), and a stolen database file opens
// nothing. A secret is looked up by its hash; a timing difference in that
// lookup can tell an attacker about hashes only, never about a secret.

// Roles of API tokens.
const (
	RoleAdmin  = "admin"  // everything
	RoleViewer = "viewer" // read-only API and console
)

// Prefixes tell the kinds of secret apart at a glance (and let the API
// skip lookups that cannot match).
const (
	NodeCredentialPrefix = "spn_"
	APITokenPrefix       = "spt_"
)

// ErrBadCredential is a credential the store does not know, or whose node
// has ended, or a token that was revoked.
var ErrBadCredential = errors.New("unknown, revoked or expired credential")

// HashSecret returns the hex SHA-256 of a secret, as the store keeps it.
func HashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// SameHash compares two hashes in constant time.
func SameHash(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// APIToken is a named API token; its secret is never stored.
type APIToken struct {
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"createdAt"`
}

var tokenName = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

// ValidateToken checks a new token's name and role; the error names the
// field and the fix.
func ValidateToken(name, role string) error {
	if !tokenName.MatchString(name) {
		return fmt.Errorf("name: %q is not a token name; use 1-63 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit", name)
	}
	if role != RoleAdmin && role != RoleViewer {
		return fmt.Errorf("role: %q is not a role; use %s (everything) or %s (read-only)", role, RoleAdmin, RoleViewer)
	}
	return nil
}
