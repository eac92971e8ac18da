// Package cloudinit renders what a cloud VM runs to become a spotml node:
// a cloud-config document that installs spotml, writes a start script and
// a systemd unit that runs it at every boot. The start script reads the
// node's identity (its name and this incarnation's credential) from the
// cloud's instance metadata service at each boot, because a VM stopped
// and started again is a new incarnation with a new credential, and runs
// the agent.
package cloudinit

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Paths on the VM.
const (
	startScriptPath = "/usr/local/lib/spotml/start-agent.sh"
	unitPath        = "/etc/systemd/system/spotml-agent.service"
	unitName        = "spotml-agent.service"
)

// Bootstrap is what a VM needs to run its node's agent.
type Bootstrap struct {
	ServerURL string   // the control plane as the VM reaches it
	SpotmlURL string   // where the VM downloads a linux spotml binary
	AgentArgs []string // extra flags for the agent
	Setup     []string // the pool's setup commands, run once as root
	// Format is the agent's --metadata-format: the cloud whose eviction
	// notices it watches (azure, aws, gcp).
	Format string
	// ReadIdentity is a shell snippet that prints the node's identity
	// from the metadata service at "$imds": lines node=NAME and
	// credential=SECRET (other lines are ignored).
	ReadIdentity string
	// Comments are put at the top of the cloud-config, as comments (AWS
	// carries the identity there: user data is all an instance has).
	Comments []string
}

// Identity is the identity text a start script reads.
func Identity(node, credential string) string {
	return "node=" + node + "\ncredential=" + credential + "\n"
}

// StartScript renders the POSIX shell script that downloads spotml (once),
// reads the node's identity from the VM's user data and runs the agent in
// its place. SPOTML_ROOT (a directory the paths are taken under) and
// SPOTML_IMDS (the metadata service's base URL) exist for tests; a VM has
// neither set.
func (b Bootstrap) StartScript() string {
	args := []string{"agent", "--server", shellQuote(b.ServerURL), "--node", `"$node"`, "--workdir", `"$state/work"`,
		"--credential-file", `"$state/credential"`, "--metadata-url", `"$imds"`, "--metadata-format", b.Format}
	for _, a := range b.AgentArgs {
		args = append(args, shellQuote(a))
	}
	return `#!/bin/sh
# spotml agent start script, written by spotml.
set -eu
root="${SPOTML_ROOT:-}"
imds="${SPOTML_IMDS:-http://169.254.169.254}"
bin="$root/usr/local/bin/spotml"
state="$root/var/lib/spotml"
umask 077
mkdir -p "$state/work" "$(dirname "$bin")"
if [ ! -x "$bin" ]; then
	curl -fsSL --retry 20 --retry-delay 3 --retry-connrefused -o "$bin.tmp" ` + shellQuote(b.SpotmlURL) + `
	chmod 0755 "$bin.tmp"
	mv "$bin.tmp" "$bin"
fi
# The node's identity: its name and this incarnation's credential.
ud=$(` + b.ReadIdentity + `)
node=$(printf '%s\n' "$ud" | sed -n 's/^node=//p')
cred=$(printf '%s\n' "$ud" | sed -n 's/^credential=//p')
if [ -z "$node" ] || [ -z "$cred" ]; then
	echo "spotml: the metadata service holds no node identity for this VM (spotml may have removed it once the agent registered); the node is replaced when its heartbeats stop" >&2
	exit 1
fi
printf '%s\n' "$cred" >"$state/credential"
unset ud cred
exec "$bin" ` + strings.Join(args, " ") + "\n"
}

// CloudInit renders the VM's custom data: a cloud-config document.
func (b Bootstrap) CloudInit() (string, error) {
	unit := agentUnit
	type file struct {
		Path        string `yaml:"path"`
		Permissions string `yaml:"permissions"`
		Content     string `yaml:"content"`
	}
	doc := struct {
		WriteFiles []file     `yaml:"write_files"`
		RunCmd     [][]string `yaml:"runcmd"`
	}{
		WriteFiles: []file{
			{Path: startScriptPath, Permissions: "0755", Content: b.StartScript()},
			{Path: unitPath, Permissions: "0644", Content: unit},
		},
	}
	for _, c := range b.Setup {
		doc.RunCmd = append(doc.RunCmd, []string{"sh", "-c", c})
	}
	doc.RunCmd = append(doc.RunCmd, []string{"systemctl", "daemon-reload"}, []string{"systemctl", "enable", "--now", unitName})
	out, err := yaml.Marshal(doc)
	if err != nil {
		return "", fmt.Errorf("render cloud-init: %w", err)
	}
	head := "#cloud-config\n"
	for _, c := range b.Comments {
		head += "# " + c + "\n"
	}
	return head + string(out), nil
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=@,+%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
