package cloudinit

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestStartScriptRuns runs the rendered start script in a temp directory:
// it downloads "spotml" (here a script that records how it was run) once,
// reads the node's identity from the metadata service as Azure serves
// user data (base64, Metadata: true required) and execs the agent with
// the credential in a file only.
func TestStartScriptRuns(t *testing.T) {
	for _, tool := range []string{"sh", "curl", "base64", "sed"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	root := t.TempDir()
	fakeSpotml := "#!/bin/sh\nprintf '%s\\n' \"$@\" >\"$SPOTML_ROOT/args\"\ncat \"$SPOTML_ROOT/var/lib/spotml/credential\" >\"$SPOTML_ROOT/cred\"\n"
	var downloads atomic.Int32
	bins := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		downloads.Add(1)
		w.Write([]byte(fakeSpotml))
	}))
	defer bins.Close()
	userData := base64.StdEncoding.EncodeToString([]byte(Identity("gpu-a1", "s3cr3t 'quoted'")))
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Metadata") != "true" || r.URL.Path != "/metadata/instance/compute/userData" || r.URL.Query().Get("format") != "text" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		w.Write([]byte(userData))
	}))
	defer imds.Close()

	// As the azure provider reads it: Azure's user data, base64.
	b := Bootstrap{ServerURL: "http://127.0.0.1:1/x y", SpotmlURL: bins.URL + "/spotml", AgentArgs: []string{"--log-level", "debug"},
		Format: "azure", ReadIdentity: `curl -fsS -H Metadata:true "$imds/metadata/instance/compute/userData?api-version=2021-01-01&format=text" | base64 -d`}
	script := filepath.Join(root, "start-agent.sh")
	if err := os.WriteFile(script, []byte(b.StartScript()), 0o755); err != nil {
		t.Fatal(err)
	}
	run := func() {
		t.Helper()
		cmd := exec.Command("sh", script)
		cmd.Env = append(os.Environ(), "SPOTML_ROOT="+root, "SPOTML_IMDS="+imds.URL)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("start script: %v\n%s", err, out)
		}
	}
	run()
	args, _ := os.ReadFile(filepath.Join(root, "args"))
	want := strings.Join([]string{"agent", "--server", "http://127.0.0.1:1/x y", "--node", "gpu-a1",
		"--workdir", root + "/var/lib/spotml/work", "--credential-file", root + "/var/lib/spotml/credential",
		"--metadata-url", imds.URL, "--metadata-format", "azure", "--log-level", "debug"}, "\n") + "\n"
	if string(args) != want {
		t.Errorf("agent run as\n%s\nwant\n%s", args, want)
	}
	if cred, _ := os.ReadFile(filepath.Join(root, "cred")); string(cred) != "s3cr3t 'quoted'\n" {
		t.Errorf("credential file = %q", cred)
	}
	if fi, err := os.Stat(filepath.Join(root, "var/lib/spotml/credential")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("credential file mode: %v %v", fi, err)
	}
	// A reboot: spotml is not downloaded again.
	run()
	if n := downloads.Load(); n != 1 {
		t.Errorf("spotml downloaded %d times, want once", n)
	}
	// The identity emptied (the agent registered): the script refuses.
	userData = ""
	cmd := exec.Command("sh", script)
	cmd.Env = append(os.Environ(), "SPOTML_ROOT="+root, "SPOTML_IMDS="+imds.URL)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "no node identity") {
		t.Errorf("script with emptied user data: %v\n%s", err, out)
	}
}

// TestCloudInit checks the custom data is a cloud-config that writes the
// start script and unit and starts the unit after the pool's setup.
func TestCloudInit(t *testing.T) {
	b := Bootstrap{ServerURL: "https://cp", SpotmlURL: "https://blob/spotml", Setup: []string{"apt-get install -y nvidia-driver-550", "echo 'x: y'"},
		Comments: []string{"spotml-node=gpu-a1"}}
	ci, err := b.CloudInit()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ci, "#cloud-config\n# spotml-node=gpu-a1\n") {
		t.Fatalf("custom data does not start with #cloud-config:\n%s", ci)
	}
	var doc struct {
		WriteFiles []struct{ Path, Permissions, Content string } `yaml:"write_files"`
		RunCmd     [][]string                                    `yaml:"runcmd"`
	}
	if err := yaml.Unmarshal([]byte(ci), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.WriteFiles) != 2 || doc.WriteFiles[0].Path != startScriptPath || doc.WriteFiles[0].Content != b.StartScript() ||
		doc.WriteFiles[0].Permissions != "0755" || doc.WriteFiles[1].Path != unitPath || !strings.Contains(doc.WriteFiles[1].Content, "ExecStart="+startScriptPath) {
		t.Errorf("write_files = %+v", doc.WriteFiles)
	}
	want := [][]string{{"sh", "-c", "apt-get install -y nvidia-driver-550"}, {"sh", "-c", "echo 'x: y'"},
		{"systemctl", "daemon-reload"}, {"systemctl", "enable", "--now", unitName}}
	if len(doc.RunCmd) != len(want) {
		t.Fatalf("runcmd = %q", doc.RunCmd)
	}
	for i := range want {
		if strings.Join(doc.RunCmd[i], " ") != strings.Join(want[i], " ") {
			t.Errorf("runcmd[%d] = %q, want %q", i, doc.RunCmd[i], want[i])
		}
	}
}
