package gcp

import (
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestStartupScriptRuns runs the rendered startup script twice (two
// boots) in a temp directory, with a systemctl stand-in that runs the
// unit's ExecStart: the pool's setup runs on the first boot only; the
// start script downloads "spotml" (a script that records how it was run)
// and runs it with the node's name and credential read from the metadata
// server (Metadata-Flavor: Google required), the credential in a file
// only. With the credential removed from metadata, the start script
// refuses to start, saying why.
func TestStartupScriptRuns(t *testing.T) {
	for _, tool := range []string{"sh", "curl", "sed"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	root := t.TempDir()
	fakeSpotml := "#!/bin/sh\nprintf '%s\\n' \"$@\" >\"$SPOTML_ROOT/args\"\ncat \"$SPOTML_ROOT/var/lib/spotml/credential\" >\"$SPOTML_ROOT/cred\"\n"
	bins := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(fakeSpotml)) }))
	defer bins.Close()
	var mu sync.Mutex
	attrs := map[string]string{KeyNode: "gpu-a1", KeyCredential: "s3cr3t 'quoted'"}
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Metadata-Flavor", "Google")
		key, ok := strings.CutPrefix(r.URL.Path, "/computeMetadata/v1/instance/attributes/")
		mu.Lock()
		v, found := attrs[key]
		mu.Unlock()
		switch {
		case r.Header.Get("Metadata-Flavor") != "Google":
			http.Error(w, "Missing Metadata-Flavor:Google header.", http.StatusForbidden)
		case !ok || !found:
			http.NotFound(w, r)
		default:
			w.Write([]byte(v))
		}
	}))
	defer imds.Close()
	bin := t.TempDir()
	os.WriteFile(filepath.Join(bin, "systemctl"), []byte(`#!/bin/sh
echo "$*" >>"$SPOTML_ROOT/systemctl.log"
[ "$1" = enable ] || exit 0
exec "$SPOTML_ROOT$(sed -n 's/^ExecStart=//p' "$SPOTML_ROOT/etc/systemd/system/$3")"
`), 0o755)
	script := filepath.Join(t.TempDir(), "startup-script")
	b := Bootstrap(Config{ServerURL: "https://cp.example", SpotmlURL: bins.URL + "/spotml"}, []string{`echo ran >>"$SPOTML_ROOT/setup.log"`})
	os.WriteFile(script, []byte(b.StartupScript()), 0o755)
	boot := func() (string, error) {
		cmd := exec.Command("sh", script)
		cmd.Env = append(os.Environ(), "SPOTML_ROOT="+root, "SPOTML_IMDS="+imds.URL, "PATH="+bin+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for i := range 2 {
		if out, err := boot(); err != nil {
			t.Fatalf("boot %d: %v\n%s", i+1, err, out)
		}
	}
	read := func(p string) string { b, _ := os.ReadFile(filepath.Join(root, p)); return string(b) }
	if got := read("setup.log"); got != "ran\n" {
		t.Errorf("setup ran %q, want once", got)
	}
	if got := read("systemctl.log"); got != "daemon-reload\nenable --now spotml-agent.service\ndaemon-reload\nenable --now spotml-agent.service\n" {
		t.Errorf("systemctl calls %q", got)
	}
	args := read("args")
	for _, want := range []string{"agent\n", "--node\ngpu-a1\n", "--server\nhttps://cp.example\n", "--metadata-format\ngcp\n", "--metadata-url\n" + imds.URL + "\n"} {
		if !strings.Contains(args, want) {
			t.Errorf("agent args lack %q:\n%s", want, args)
		}
	}
	if strings.Contains(args, "s3cr3t") {
		t.Error("the credential is on the agent's command line")
	}
	if got := read("cred"); got != "s3cr3t 'quoted'\n" {
		t.Errorf("credential file %q", got)
	}
	mu.Lock()
	delete(attrs, KeyCredential)
	mu.Unlock()
	out, err := boot()
	if err == nil || !strings.Contains(out, "holds no node identity") {
		t.Errorf("boot without a credential: %v\n%s", err, out)
	}
}
