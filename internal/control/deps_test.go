package control_test

import (
	"errors"
	"go/parser"
	"go/token"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
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
		"github.com/spotml/spotml/internal/plan", // spotml plan's simulation, over placement's decisions
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

// Packages that are or lead to a database: only the control plane links
// them. The agent, the gateway and the CLI speak the REST API.
var (
	databasePackages = []string{"database/sql"}
	databasePrefixes = []string{
		"modernc.org/sqlite", "github.com/mattn/go-sqlite3", "github.com/jackc/pgx", "github.com/lib/pq",
		// The store and its backends (internal/store/sqlite, .../postgres).
		"github.com/spotml/spotml/internal/store",
	}
)

// TestClientsLinkNoDatabase: the agent (on every node), the gateway, the
// API client and the API's types link no database and no store, so that
// storage rows cannot become the public schema again and a node's binary
// could be built without one. The CLI's commands live in cmd/spotml beside
// those that run a control plane; every file there but the ones that run
// or restore one imports only packages that link no database either.
func TestClientsLinkNoDatabase(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	const mod = "github.com/spotml/spotml/"
	pkgs := []string{mod + "internal/agent", mod + "internal/gateway", mod + "internal/client", mod + "internal/api"}
	for _, pkg := range pkgs {
		for _, d := range goListDeps(t, goBin, pkg) {
			if linksDatabase(d) {
				t.Errorf("%s imports %s: it must speak the REST API (internal/client, internal/api), not the store", pkg, d)
			}
		}
	}

	// Files of cmd/spotml that run a control plane or open its store.
	controlPlane := map[string]bool{"up.go": true, "gateway.go": true, "restore.go": true, "store.go": true, "kube.go": true, "cloud.go": true}
	files, err := filepath.Glob(filepath.Join("..", "..", "cmd", "spotml", "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("cmd/spotml's files: %v %v", files, err)
	}
	imports := map[string][]string{} // import path -> CLI files importing it
	fset := token.NewFileSet()
	for _, f := range files {
		name := filepath.Base(f)
		if strings.HasSuffix(name, "_test.go") || controlPlane[name] {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, im := range af.Imports {
			p, _ := strconv.Unquote(im.Path.Value)
			imports[p] = append(imports[p], name)
		}
	}
	// One go list for all of them; only when it finds a database is each
	// import listed on its own, to name the culprit.
	all := slices.Sorted(maps.Keys(imports))
	if !slices.ContainsFunc(goListDeps(t, goBin, all...), linksDatabase) {
		return
	}
	for _, p := range all {
		if i := slices.IndexFunc(goListDeps(t, goBin, p), linksDatabase); i >= 0 {
			t.Errorf("cmd/spotml/%s imports %s, which links %s: a CLI command speaks the API (one that runs or restores a control plane belongs in %v)",
				imports[p][0], p, goListDeps(t, goBin, p)[i], slices.Sorted(maps.Keys(controlPlane)))
		}
	}
}

func linksDatabase(pkg string) bool {
	if slices.Contains(databasePackages, pkg) {
		return true
	}
	return slices.ContainsFunc(databasePrefixes, func(p string) bool { return pkg == p || strings.HasPrefix(pkg, p+"/") })
}

func goListDeps(t *testing.T, goBin string, pkgs ...string) []string {
	t.Helper()
	out, err := exec.Command(goBin, append([]string{"list", "-deps"}, pkgs...)...).Output()
	if err != nil {
		var msg string
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			msg = string(ee.Stderr)
		}
		t.Fatalf("go list -deps %s: %v\n%s", strings.Join(pkgs, " "), err, msg)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatalf("go list -deps %s printed nothing", strings.Join(pkgs, " "))
	}
	return deps
}
