package storetest

import (
	"errors"
	"strings"
	"testing"

	"github.com/spotml/spotml/internal/store"
)

// testBootstrapSecret: the admin and join tokens are kept as hashes; the
// holder of the file keeps its secret across restarts, a lost file gets a
// new one, and a plain-text secret of an older spotml keeps working once.
func testBootstrapSecret(t *testing.T, h *Harness) {
	a, err := h.St.EnsureSecret(h.Ctx, "token", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 48 {
		t.Errorf("secret %q: want 48 hex digits", a)
	}
	h.Reopen()
	if again, _ := h.St.EnsureSecret(h.Ctx, "token", a); again != a {
		t.Errorf("EnsureSecret with the held secret = %q, want %q", again, a)
	}
	other, _ := h.St.EnsureSecret(h.Ctx, "join-token", "")
	if other == a {
		t.Errorf("two keys share the secret %q", a)
	}
	if forged, _ := h.St.EnsureSecret(h.Ctx, "token", "guess"); forged == "guess" || forged == a {
		t.Errorf("EnsureSecret with a wrong secret = %q: want a new one", forged)
	}
}

// testNodeCredentials: a credential names its node while the node is
// live, stops working when the node ends or gets a new credential, and
// only its hash is stored.
func testNodeCredentials(t *testing.T, h *Harness) {
	h.Apply(PoolCPU)
	h.Node("n1", true)
	h.Node("n2", false)
	c1, err := h.St.IssueNodeCredential(h.Ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := h.St.IssueNodeCredential(h.Ctx, "n2")
	if !strings.HasPrefix(c1, store.NodeCredentialPrefix) || len(c1) < 64 || c1 == c2 {
		t.Errorf("credentials %q, %q: want distinct, prefixed, 256 bits", c1, c2)
	}
	for cred, want := range map[string]string{c1: "n1", c2: "n2"} {
		if got, err := h.St.CredentialNode(h.Ctx, cred); err != nil || got != want {
			t.Errorf("CredentialNode = %q, %v; want %s", got, err, want)
		}
	}
	for _, bad := range []string{"", "spn_nope", c1 + "x", store.HashSecret(c1)} {
		if _, err := h.St.CredentialNode(h.Ctx, bad); !errors.Is(err, store.ErrBadCredential) {
			t.Errorf("CredentialNode(%q) = %v, want ErrBadCredential", bad, err)
		}
	}
	if _, err := h.St.IssueNodeCredential(h.Ctx, "ghost"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("credential for a node that does not exist: %v, want not found", err)
	}
	h.Reopen() // credentials survive a restarted control plane
	if got, _ := h.St.CredentialNode(h.Ctx, c1); got != "n1" {
		t.Errorf("after reopen CredentialNode = %q, want n1", got)
	}
	// Each change below follows a successful lookup, so that it must also
	// end what the store keeps in memory of the credential.
	if got, _ := h.St.CredentialNode(h.Ctx, c2); got != "n2" {
		t.Errorf("after reopen CredentialNode = %q, want n2", got)
	}
	// A new credential replaces the old one.
	c2b, _ := h.St.IssueNodeCredential(h.Ctx, "n2")
	if _, err := h.St.CredentialNode(h.Ctx, c2); !errors.Is(err, store.ErrBadCredential) {
		t.Errorf("replaced credential still works: %v", err)
	}
	// The end of a node ends its credential; an ended node gets none.
	if err := h.St.EndNode(h.Ctx, "n1", store.NodePreempted, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.St.CredentialNode(h.Ctx, c1); !errors.Is(err, store.ErrBadCredential) {
		t.Errorf("credential of a preempted node: %v, want ErrBadCredential", err)
	}
	if _, err := h.St.IssueNodeCredential(h.Ctx, "n1"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("credential for an ended node: %v, want conflict", err)
	}
	if got, _ := h.St.CredentialNode(h.Ctx, c2b); got != "n2" {
		t.Errorf("another node's end touched n2's credential: %q", got)
	}
	if err := h.St.EndNode(h.Ctx, "n2", store.NodeLost, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.St.CredentialNode(h.Ctx, c2b); !errors.Is(err, store.ErrBadCredential) {
		t.Errorf("credential of a lost node: %v", err)
	}

	// A deallocated node that restarts comes back under its name with a
	// new credential; the one of its earlier life stays dead.
	h.Node("d1", true)
	old, _ := h.St.IssueNodeCredential(h.Ctx, "d1")
	if got, _ := h.St.CredentialNode(h.Ctx, old); got != "d1" {
		t.Errorf("CredentialNode = %q, want d1", got)
	}
	if err := h.St.EndNode(h.Ctx, "d1", store.NodeDeallocated, "test"); err != nil {
		t.Fatal(err)
	}
	if err := h.St.RestartNode(h.Ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.St.CredentialNode(h.Ctx, old); !errors.Is(err, store.ErrBadCredential) {
		t.Errorf("credential of a deallocated node's earlier life works after its restart: %v", err)
	}
	fresh, err := h.St.IssueNodeCredential(h.Ctx, "d1")
	if got, _ := h.St.CredentialNode(h.Ctx, fresh); err != nil || got != "d1" {
		t.Errorf("credential after restart: %q, %v", got, err)
	}
	// A node forgotten after a refused launch takes its credential along;
	// a new node of the same name does not inherit it.
	if err := h.St.CreateNode(h.Ctx, store.Node{Name: "f1", Pool: "cpu", Priority: "spot", InstanceType: "local-small"}); err != nil {
		t.Fatal(err)
	}
	forgotten, _ := h.St.IssueNodeCredential(h.Ctx, "f1")
	if got, _ := h.St.CredentialNode(h.Ctx, forgotten); got != "f1" {
		t.Errorf("CredentialNode = %q, want f1", got)
	}
	if err := h.St.DeleteNode(h.Ctx, "f1"); err != nil {
		t.Fatal(err)
	}
	if err := h.St.CreateNode(h.Ctx, store.Node{Name: "f1", Pool: "cpu", Priority: "spot", InstanceType: "local-small"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.St.CredentialNode(h.Ctx, forgotten); !errors.Is(err, store.ErrBadCredential) {
		t.Errorf("a deleted node's credential works for a new node of its name: %v", err)
	}
}

// testAPITokens: named tokens with a role, created once, listed without
// secrets, revoked for good.
func testAPITokens(t *testing.T, h *Harness) {
	sec, tok, err := h.St.CreateAPIToken(h.Ctx, "ci-reader", store.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(sec, store.APITokenPrefix) || tok.Name != "ci-reader" || tok.Role != store.RoleViewer || !tok.CreatedAt.Equal(t0) {
		t.Errorf("created %q %+v", sec, tok)
	}
	adminSec, _, err := h.St.CreateAPIToken(h.Ctx, "ops", store.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct{ name, role, field string }{
		{"ci-reader", store.RoleAdmin, "exists"},
		{"Bad Name", store.RoleViewer, "name:"},
		{"", store.RoleViewer, "name:"},
		{"x", "root", "role:"},
	} {
		_, _, err := h.St.CreateAPIToken(h.Ctx, bad.name, bad.role)
		if err == nil || !strings.Contains(err.Error(), bad.field) {
			t.Errorf("CreateAPIToken(%q, %q) = %v, want an error about %s", bad.name, bad.role, err, bad.field)
		}
	}
	h.Reopen()
	ts, err := h.St.ListAPITokens(h.Ctx)
	if err != nil || len(ts) != 2 || ts[0].Name != "ci-reader" || ts[1].Name != "ops" || ts[1].Role != store.RoleAdmin {
		t.Fatalf("ListAPITokens = %+v, %v", ts, err)
	}
	if got, err := h.St.LookupAPIToken(h.Ctx, sec); err != nil || got.Name != "ci-reader" || got.Role != store.RoleViewer {
		t.Errorf("LookupAPIToken = %+v, %v", got, err)
	}
	if _, err := h.St.LookupAPIToken(h.Ctx, sec+"x"); !errors.Is(err, store.ErrBadCredential) {
		t.Errorf("wrong secret: %v", err)
	}
	if err := h.St.RevokeAPIToken(h.Ctx, "ci-reader"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.St.LookupAPIToken(h.Ctx, sec); !errors.Is(err, store.ErrBadCredential) {
		t.Errorf("revoked token still works: %v", err)
	}
	if err := h.St.RevokeAPIToken(h.Ctx, "ci-reader"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoke twice: %v, want not found", err)
	}
	if got, _ := h.St.LookupAPIToken(h.Ctx, adminSec); got.Name != "ops" {
		t.Errorf("revoking one token touched another: %+v", got)
	}
	// The name can be used again, with a new secret.
	again, _, err := h.St.CreateAPIToken(h.Ctx, "ci-reader", store.RoleViewer)
	if err != nil || again == sec {
		t.Errorf("recreate: %q, %v", again, err)
	}
}
