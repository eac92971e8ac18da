package cloudinit

import "strings"

// agentUnit is the systemd unit that runs the start script at every boot.
const agentUnit = `[Unit]
Description=spotml agent
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=` + startScriptPath + `
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
`

// StartupScript renders the VM's startup script, for clouds whose images
// run one at every boot instead of (or before) cloud-init: Compute
// Engine's guest environment runs the metadata key startup-script as root
// at each boot, on images with or without cloud-init. It writes the start
// script and the agent's unit, runs the pool's setup commands once (the
// first boot), and starts the unit. Like the start script, it takes its
// paths under SPOTML_ROOT, which a VM does not set.
func (b Bootstrap) StartupScript() string {
	var s strings.Builder
	s.WriteString(`#!/bin/sh
# spotml startup script, written by spotml: run as root at every boot.
set -eu
root="${SPOTML_ROOT:-}"
mkdir -p "$root` + dir(startScriptPath) + `" "$root` + dir(unitPath) + `" "$root/var/lib/spotml"
cat >"$root` + startScriptPath + `.tmp" <<'SPOTML_START_SCRIPT'
`)
	s.WriteString(b.StartScript())
	s.WriteString(`SPOTML_START_SCRIPT
chmod 0755 "$root` + startScriptPath + `.tmp"
mv "$root` + startScriptPath + `.tmp" "$root` + startScriptPath + `"
cat >"$root` + unitPath + `" <<'SPOTML_UNIT'
` + agentUnit + `SPOTML_UNIT
if [ ! -e "$root/var/lib/spotml/setup-done" ]; then
`)
	for _, c := range b.Setup {
		s.WriteString("\tsh -c " + shellQuote(c) + "\n")
	}
	s.WriteString(`	touch "$root/var/lib/spotml/setup-done"
fi
systemctl daemon-reload
systemctl enable --now ` + unitName + "\n")
	return s.String()
}

func dir(p string) string { return p[:strings.LastIndex(p, "/")] }
