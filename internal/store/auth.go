package store

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
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

// EnsureSecret returns the bootstrap secret named key (the admin token,
// the join token), keeping only its hash in the store. have is the
// plaintext the caller still holds (its file), or "". A matching have is
// returned as is; with no secret stored yet, or one the caller no longer
// holds, a new secret is made and its hash stored (so deleting the file
// rotates the secret). A secret an older spotml stored in plain text is
// returned once more and replaced by its hash.
func (s *Store) EnsureSecret(ctx context.Context, key, have string) (string, error) {
	var out string
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var v string
		err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, key).Scan(&v)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		stored, hashed := strings.CutPrefix(v, "sha256:")
		switch {
		case err == nil && !hashed: // plain text from before hashing
			out = v
		case err == nil && have != "" && SameHash(HashSecret(have), stored):
			out = have
			return nil
		default:
			out = RandomHex(24)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES (?, ?)
			ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, "sha256:"+HashSecret(out))
		return err
	})
	return out, err
}

// IssueNodeCredential makes a credential for node's current incarnation
// and returns it; it is the only time the secret exists outside the agent.
// Any earlier credential of the node stops working. A node that does not
// exist is ErrNotFound; one that has ended is ErrConflict.
func (s *Store) IssueNodeCredential(ctx context.Context, node string) (string, error) {
	cred := NodeCredentialPrefix + RandomHex(32)
	defer s.live.forgetCredential(node) // its earlier credential stops working
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var state string
		var inc int
		err := tx.QueryRowContext(ctx, `SELECT state, incarnation FROM nodes WHERE name = ?`, node).Scan(&state, &inc)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("node %q: %w", node, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if !Live(state) {
			return Conflict("node %s is %s: it gets no credential", node, state)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM node_credentials WHERE node = ?`, node); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO node_credentials (hash, node, incarnation, created_at) VALUES (?, ?, ?, ?)`,
			HashSecret(cred), node, inc, s.now().UnixNano())
		return err
	})
	if err != nil {
		return "", err
	}
	return cred, nil
}

// CredentialNode returns the node a credential belongs to. The credential
// works only while that node is live and in the incarnation it was issued
// for; otherwise ErrBadCredential.
//
// A credential found valid is kept in memory (liveness) until its node's
// state changes (EndNode, RestartNode, SetNotice, DeleteNode) or it gets a
// new credential, so that an agent's every call costs no database read:
// the store is the only writer of nodes, and each of those calls forgets
// the node after its transaction.
func (s *Store) CredentialNode(ctx context.Context, cred string) (string, error) {
	hash := HashSecret(cred)
	node, gen, ok := s.live.credential(hash)
	if ok {
		return node, nil
	}
	err := s.rdb.QueryRowContext(ctx, `SELECT c.node FROM node_credentials c JOIN nodes n ON n.name = c.node
		WHERE c.hash = ? AND n.incarnation = c.incarnation AND n.state IN (?, ?, ?)`,
		hash, NodeProvisioning, NodeReady, NodeDraining).Scan(&node)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrBadCredential
	}
	if err != nil {
		return "", err
	}
	s.live.keepCredential(hash, node, gen)
	return node, nil
}

// dropNodeCredentials ends every credential of a node (it ended or is
// forgotten).
func (s *Store) dropNodeCredentials(ctx context.Context, tx *sql.Tx, node string) error {
	_, err := tx.ExecContext(ctx, `DELETE FROM node_credentials WHERE node = ?`, node)
	return err
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

// CreateAPIToken makes a named token with a role and returns its secret,
// which exists nowhere else afterwards. A name in use is ErrConflict.
// Check name and role with ValidateToken first.
func (s *Store) CreateAPIToken(ctx context.Context, name, role string) (string, APIToken, error) {
	if err := ValidateToken(name, role); err != nil {
		return "", APIToken{}, err
	}
	secret := APITokenPrefix + RandomHex(32)
	t := APIToken{Name: name, Role: role, CreatedAt: s.now().UTC()}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM api_tokens WHERE name = ?`, name).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return Conflict("token %s exists; revoke it first (spotml token revoke %s) or choose another name", name, name)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO api_tokens (name, role, hash, created_at) VALUES (?, ?, ?, ?)`,
			name, role, HashSecret(secret), t.CreatedAt.UnixNano()); err != nil {
			return err
		}
		return s.event(ctx, tx, "TokenCreated", "token/"+name, "Created", "role "+role)
	})
	if err != nil {
		return "", APIToken{}, err
	}
	return secret, t, nil
}

// ListAPITokens returns the named tokens by name.
func (s *Store) ListAPITokens(ctx context.Context) ([]APIToken, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, role, created_at FROM api_tokens ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []APIToken
	for rows.Next() {
		var t APIToken
		var c int64
		if err := rows.Scan(&t.Name, &t.Role, &c); err != nil {
			return nil, err
		}
		t.CreatedAt = fromNanos(c)
		out = append(out, t)
	}
	return out, rows.Err()
}

// RevokeAPIToken deletes a named token; it stops working at once.
func (s *Store) RevokeAPIToken(ctx context.Context, name string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM api_tokens WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("token %q: %w (spotml token ls lists them)", name, ErrNotFound)
		}
		return s.event(ctx, tx, "TokenRevoked", "token/"+name, "Revoked", "")
	})
}

// LookupAPIToken returns the named token whose secret this is, or
// ErrBadCredential.
func (s *Store) LookupAPIToken(ctx context.Context, secret string) (APIToken, error) {
	var t APIToken
	var c int64
	err := s.db.QueryRowContext(ctx, `SELECT name, role, created_at FROM api_tokens WHERE hash = ?`, HashSecret(secret)).
		Scan(&t.Name, &t.Role, &c)
	if errors.Is(err, sql.ErrNoRows) {
		return APIToken{}, ErrBadCredential
	}
	t.CreatedAt = fromNanos(c)
	return t, err
}
