package server

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/store"
)

// Who calls: the API authenticates every request under api.Prefix to one
// principal, then checks that it may make this call. A node's calls are
// also checked against the node they name (nodeOnly).

// principal is the authenticated caller.
type principal struct {
	kind string // admin, viewer, node, join
	name string // the token's name ("bootstrap" for DATA_DIR/token), or the node's
}

const (
	kindNode = "node"
	kindJoin = "join"
)

// need is what a route asks of its caller.
type need int

const (
	needRead  need = iota // admin or viewer
	needAdmin             // admin
	needNode              // a node's credential
	needJoin              // a node's credential or the join token (register)
)

// forbidden is an authenticated caller that may not do this (403).
type forbidden struct{ err error }

func (f forbidden) Error() string { return f.err.Error() }
func (f forbidden) Unwrap() error { return f.err }

type principalKey struct{}

func caller(r *http.Request) principal {
	p, _ := r.Context().Value(principalKey{}).(principal)
	return p
}

// auth authenticates the bearer token and checks it against what the
// route needs: 401 for no or a wrong token, 403 for a right token that
// may not do this.
func (s *Server) auth(n need, h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := s.authenticate(r)
		if errors.Is(err, store.ErrBadCredential) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="spotml"`)
			writeJSON(w, http.StatusUnauthorized, api.Error{Error: err.Error()})
			return
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if err := allowed(p, n, r); err != nil {
			s.writeError(w, r, err)
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), principalKey{}, p))
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	})
}

var errNoToken = fmt.Errorf("missing or wrong API token: send 'Authorization: Bearer TOKEN' with the token from DATA_DIR/token or one made by spotml token create (the CLI reads SPOTML_TOKEN or that file): %w", store.ErrBadCredential)

// authenticate finds who sent r. The bootstrap secrets are compared in
// constant time; named tokens and node credentials are looked up by
// their SHA-256 in the store.
func (s *Server) authenticate(r *http.Request) (principal, error) {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	switch {
	case !ok || got == "":
		return principal{}, errNoToken
	case equal(got, s.cfg.Token):
		return principal{kind: store.RoleAdmin, name: "bootstrap"}, nil
	case equal(got, s.cfg.JoinToken):
		return principal{kind: kindJoin, name: "join"}, nil
	case strings.HasPrefix(got, store.NodeCredentialPrefix):
		node, err := s.cfg.Store.CredentialNode(r.Context(), got)
		if errors.Is(err, store.ErrBadCredential) {
			return principal{}, fmt.Errorf("node credential refused: the token is unknown, or its node has ended (an ended node's agent must stop): %w", err)
		}
		if err != nil {
			return principal{}, err
		}
		return principal{kind: kindNode, name: node}, nil
	case strings.HasPrefix(got, store.APITokenPrefix):
		t, err := s.cfg.Store.LookupAPIToken(r.Context(), got)
		if errors.Is(err, store.ErrBadCredential) {
			return principal{}, fmt.Errorf("API token refused: it is unknown or was revoked (spotml token ls lists the live ones): %w", err)
		}
		if err != nil {
			return principal{}, err
		}
		return principal{kind: t.Role, name: t.Name}, nil
	}
	return principal{}, errNoToken
}

// allowed says whether p may call a route that needs n.
func allowed(p principal, n need, r *http.Request) error {
	call := r.Method + " " + r.URL.Path
	switch p.kind {
	case store.RoleAdmin:
		if n == needNode || n == needJoin {
			return forbidden{fmt.Errorf("%s: the agent API takes a node's credential (or, to register, the join token), not an API token", call)}
		}
		return nil
	case store.RoleViewer:
		switch n {
		case needRead:
			return nil
		case needAdmin:
			return forbidden{fmt.Errorf("%s: token %q has role viewer, which is read-only; this call needs a token with role admin", call, p.name)}
		}
		return forbidden{fmt.Errorf("%s: the agent API takes a node's credential, not an API token", call)}
	case kindNode:
		if n == needNode || n == needJoin {
			return nil
		}
		return forbidden{fmt.Errorf("%s: a node credential opens the agent API only", call)}
	case kindJoin:
		if n == needJoin {
			return nil
		}
		return forbidden{fmt.Errorf("%s: the join token only registers an agent (POST %s/agent/register), which then uses the node credential it gets back", call, api.Prefix)}
	}
	return forbidden{fmt.Errorf("%s: not allowed", call)}
}

// nodeOnly checks that a node's call speaks for that node alone.
func nodeOnly(r *http.Request, node string) error {
	p := caller(r)
	if p.kind == kindNode && p.name != node {
		return forbidden{fmt.Errorf("node %q: this credential belongs to node %q and cannot act for another node", node, p.name)}
	}
	return nil
}

func equal(a, b string) bool {
	return b != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) error {
	ts, err := s.cfg.Store.ListAPITokens(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, convert(ts, toToken))
	return nil
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) error {
	var req api.TokenRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := store.ValidateToken(req.Name, req.Role); err != nil {
		return badRequest{err}
	}
	secret, t, err := s.cfg.Store.CreateAPIToken(r.Context(), req.Name, req.Role)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, api.TokenCreated{Token: toToken(t), Secret: secret})
	return nil
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) error {
	if err := s.cfg.Store.RevokeAPIToken(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
