package control_test

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// TestDecisionsStayPure keeps the decisions the control plane applies pure
// functions, state in and plan out: the batch scheduler, the replica
// autoscaler and the replica placement must not be able to reach the
// network, a database, a subprocess or a cloud API.
func TestDecisionsStayPure(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	forbidden := []string{"net/http", "net/rpc", "database/sql", "os/exec"}
	forbiddenPrefixes := []string{"github.com/aws/", "github.com/Azure/", "cloud.google.com/", "google.golang.org/api", "gocloud.dev", "modernc.org/sqlite"}
	for _, pkg := range []string{
		"github.com/spotml/spotml/internal/sched",
		"github.com/spotml/spotml/internal/autoscale",
		"github.com/spotml/spotml/internal/placement",
	} {
		out, err := exec.Command(goBin, "list", "-deps", pkg).Output()
		if err != nil {
			var msg string
			if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
				msg = string(ee.Stderr)
			}
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, msg)
		}
		deps := strings.Fields(string(out))
		if len(deps) == 0 {
			t.Fatalf("go list -deps %s printed nothing", pkg)
		}
		for _, d := range deps {
			for _, f := range forbidden {
				if d == f {
					t.Errorf("%s imports %s; it must stay pure", pkg, d)
				}
			}
			for _, p := range forbiddenPrefixes {
				if strings.HasPrefix(d, p) {
					t.Errorf("%s imports %s; it must stay pure", pkg, d)
				}
			}
		}
	}
}
