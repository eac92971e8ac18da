package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/spotml/spotml/internal/store"
)

// EnsureSecret returns the bootstrap secret named key (the admin token,
// the join token), keeping only its hash in the store. have is the
// plaintext the caller still holds (its file), or "". A matching have is
// returned as is; with no secret stored yet, or one the caller no longer
// holds, a new secret is made and its hash stored (so deleting the file
// rotates the secret). A secret an older spotml stored in plain text is
// returned once more and replaced by its hash.
func (s *Store) EnsureSecret(ctx context.Context, key, have string) (string, error) {
	var out string
	err := s.tx(ctx, func(tx *txn) error {
		var v string
		err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, key).Scan(&v)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		stored, hashed := strings.CutPrefix(v, "sha256:")
		switch {
		case err == nil && !hashed: // plain text from before hashing
			out = v
		case err == nil && have != "" && store.SameHash(store.HashSecret(have), stored):
			out = have
			return nil
		default:
			out = store.RandomHex(24)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES (?, ?)
			ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, "sha256:"+store.HashSecret(out))
		return err
	})
	return out, err
}

// IssueNodeCredential makes a credential for node's current incarnation
// and returns it; it is the only time the secret exists outside the agent.
// Any earlier credential of the node stops working. A node that does not
// exist is ErrNotFound; one that has ended is ErrConflict.
func (s *Store) IssueNodeCredential(ctx context.Context, node string) (string, error) {
	cred := store.NodeCredentialPrefix + store.RandomHex(32)
	defer s.live.forgetCredential(node) // its earlier credential stops working
	err := s.tx(ctx, func(tx *txn) error {
		var state string
		var inc int
		err := tx.QueryRowContext(ctx, `SELECT state, incarnation FROM nodes WHERE name = ?`+s.d.ForUpdate, node).Scan(&state, &inc)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("node %q: %w", node, store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		if !store.Live(state) {
			return store.Conflict("node %s is %s: it gets no credential", node, state)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM node_credentials WHERE node = ?`, node); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO node_credentials (hash, node, incarnation, created_at) VALUES (?, ?, ?, ?)`,
			store.HashSecret(cred), node, inc, s.now().UnixNano())
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
	hash := store.HashSecret(cred)
	node, gen, ok := s.live.credential(hash)
	if ok {
		return node, nil
	}
	err := s.rdb.QueryRowContext(ctx, `SELECT c.node FROM node_credentials c JOIN nodes n ON n.name = c.node
		WHERE c.hash = ? AND n.incarnation = c.incarnation AND n.state IN (?, ?, ?)`,
		hash, store.NodeProvisioning, store.NodeReady, store.NodeDraining).Scan(&node)
	if errors.Is(err, sql.ErrNoRows) {
		return "", store.ErrBadCredential
	}
	if err != nil {
		return "", err
	}
	s.live.keepCredential(hash, node, gen)
	return node, nil
}

// dropNodeCredentials ends every credential of a node (it ended or is
// forgotten).
func (s *Store) dropNodeCredentials(ctx context.Context, tx *txn, node string) error {
	_, err := tx.ExecContext(ctx, `DELETE FROM node_credentials WHERE node = ?`, node)
	return err
}

// CreateAPIToken makes a named token with a role and returns its secret,
// which exists nowhere else afterwards. A name in use is ErrConflict.
// Check name and role with ValidateToken first.
func (s *Store) CreateAPIToken(ctx context.Context, name, role string) (string, store.APIToken, error) {
	if err := store.ValidateToken(name, role); err != nil {
		return "", store.APIToken{}, err
	}
	secret := store.APITokenPrefix + store.RandomHex(32)
	t := store.APIToken{Name: name, Role: role, CreatedAt: s.now().UTC()}
	err := s.tx(ctx, func(tx *txn) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM api_tokens WHERE name = ?`, name).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return store.Conflict("token %s exists; revoke it first (spotml token revoke %s) or choose another name", name, name)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO api_tokens (name, role, hash, created_at) VALUES (?, ?, ?, ?)`,
			name, role, store.HashSecret(secret), t.CreatedAt.UnixNano()); err != nil {
			return err
		}
		return s.event(ctx, tx, "TokenCreated", "token/"+name, "Created", "role "+role)
	})
	if err != nil {
		return "", store.APIToken{}, err
	}
	return secret, t, nil
}

// ListAPITokens returns the named tokens by name.
func (s *Store) ListAPITokens(ctx context.Context) ([]store.APIToken, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, role, created_at FROM api_tokens ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.APIToken
	for rows.Next() {
		var t store.APIToken
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
	return s.tx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM api_tokens WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("token %q: %w (spotml token ls lists them)", name, store.ErrNotFound)
		}
		return s.event(ctx, tx, "TokenRevoked", "token/"+name, "Revoked", "")
	})
}

// LookupAPIToken returns the named token whose secret this is, or
// ErrBadCredential.
func (s *Store) LookupAPIToken(ctx context.Context, secret string) (store.APIToken, error) {
	var t store.APIToken
	var c int64
	err := s.db.QueryRowContext(ctx, `SELECT name, role, created_at FROM api_tokens WHERE hash = ?`, store.HashSecret(secret)).
		Scan(&t.Name, &t.Role, &c)
	if errors.Is(err, sql.ErrNoRows) {
		return store.APIToken{}, store.ErrBadCredential
	}
	t.CreatedAt = fromNanos(c)
	return t, err
}
