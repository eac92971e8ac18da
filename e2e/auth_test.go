package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/store"
)

// TestLeastPrivilege runs a task that prints everything it can see of
// spotml's secrets: its environment, its agent's environment and its
// node's work directory. None holds a token or credential, although the
// control plane was started with one in its environment. Then a viewer
// token made with the CLI reads but changes nothing, and stops working
// when revoked; no secret is in the database file.
func TestLeastPrivilege(t *testing.T) {
	t.Setenv("SPOTML_JOIN_TOKEN", "decoy-join-token-in-the-environment")
	c := newCluster(t)
	c.apply(spotPool("spot-a", "aws", 1) + `apiVersion: spotml/v1
kind: Job
metadata: {name: snoop}
spec:
  pool: spot-a
  tasks:
    - name: look
      command:
        - /bin/sh
        - -c
        - |
          echo "== env"; env
          echo "== agent env"; tr '\0' '\n' < /proc/$PPID/environ
          echo "== agent args"; tr '\0' ' ' < /proc/$PPID/cmdline; echo
          echo "== node dir"; ls -la ../../..
          cat ../../../credential 2>&1 || true
      resources: {cpu: 1}
`)
	if out, err := c.cli("wait", "job", "snoop", "--timeout", "60s", "-q"); err != nil {
		t.Fatalf("job: %v\n%s", err, out)
	}
	logs := c.mustCLI("logs", "snoop/look")
	if !strings.Contains(logs, "SPOTML_TASK=look") || !strings.Contains(logs, "--credential-file") || !strings.Contains(logs, "No such file") {
		t.Fatalf("the task did not print what it sees:\n%s", logs)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(c.data, name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	admin, join := read("token"), read("join-token")
	for what, secret := range map[string]string{"the admin token": admin, "the join token": join, "the decoy join token": "decoy-join-token",
		"a node credential": store.NodeCredentialPrefix, "an API token": store.APITokenPrefix, "a token variable": "_TOKEN=", "a credential variable": "_CREDENTIAL="} {
		if strings.Contains(logs, secret) {
			t.Errorf("the task sees %s (%q):\n%s", what, secret, logs)
		}
	}

	// A viewer token reads everything and changes nothing.
	secret := strings.TrimSpace(c.mustCLI("token", "create", "ci", "--role", "viewer"))
	if !strings.HasPrefix(secret, store.APITokenPrefix) {
		t.Fatalf("token create printed %q", secret)
	}
	viewer := func(args ...string) (string, error) {
		cmd := exec.Command(binary, append([]string{"--server", "http://" + c.addr}, args...)...)
		cmd.Env = append(os.Environ(), "SPOTML_TOKEN="+secret)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return out.String() + errb.String(), err
	}
	if out, err := viewer("get", "jobs"); err != nil || !strings.Contains(out, "snoop") {
		t.Errorf("viewer get jobs: %v\n%s", err, out)
	}
	if out, err := viewer("logs", "snoop/look"); err != nil || !strings.Contains(out, "== env") {
		t.Errorf("viewer logs: %v", err)
	}
	f := filepath.Join(t.TempDir(), "p.yaml")
	os.WriteFile(f, []byte(strings.TrimSuffix(spotPool("viewer-pool", "aws", 1), "---\n")), 0o644)
	node := c.nodes()[0].Name
	for _, args := range [][]string{{"apply", "-f", f}, {"delete", "job", "snoop"}, {"evict", node}, {"blob", "put", f, "outputs/x.yaml"}, {"token", "ls"}} {
		out, err := viewer(args...)
		if err == nil || !strings.Contains(out, `"ci" has role viewer, which is read-only`) {
			t.Errorf("viewer %s: %v %s; want refused naming the role", strings.Join(args, " "), err, out)
		}
	}
	if out := c.mustCLI("get", "pools", "-o", "name"); strings.Contains(out, "viewer-pool") {
		t.Errorf("a viewer's apply stored a pool: %s", out)
	}
	if c.job("snoop").State != store.JobSucceeded {
		t.Errorf("a viewer's delete touched the job")
	}
	if n := c.nodes()[0]; n.Name != node || !n.NoticeDeadline.IsZero() {
		t.Errorf("a viewer's evict touched node %s: %+v", node, n)
	}

	ls := c.mustCLI("token", "ls")
	if !regexp.MustCompile(`(?m)^ci\s+viewer\s`).MatchString(ls) || strings.Contains(ls, secret) {
		t.Errorf("token ls:\n%s", ls)
	}
	c.mustCLI("token", "revoke", "ci")
	if out, err := viewer("get", "jobs"); err == nil || !strings.Contains(out, "revoked") {
		t.Errorf("revoked token: %v %s", err, out)
	}

	// No secret is in the database (the tokens live in DATA_DIR files
	// and with their holders only).
	c.stop(syscall.SIGINT)
	time.Sleep(100 * time.Millisecond)
	var db []byte
	for _, name := range []string{"spotml.db", "spotml.db-wal"} {
		b, _ := os.ReadFile(filepath.Join(c.data, name))
		db = append(db, b...)
	}
	for what, s := range map[string]string{"admin token": admin, "join token": join, "viewer token": secret} {
		if bytes.Contains(db, []byte(s)) {
			t.Errorf("the %s is in the database file", what)
		}
	}
	if !bytes.Contains(db, []byte(store.HashSecret(secret))) && !bytes.Contains(db, []byte(store.HashSecret(admin))) {
		t.Errorf("neither token's hash is in the database file: is the check reading the right file?")
	}
}
