package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/spotml/spotml/internal/provider/cloudtest"
	gcpprov "github.com/spotml/spotml/internal/provider/gcp"
)

// TestStopThenRestartKeepsNameAndDisk: `spotml evict` preempts a Spot VM
// of a pool with evictionPolicy deallocate (instanceTerminationAction
// STOP); spotml starts the same VM again (same instance ID, same boot
// disk: spotml is not downloaded again and the pool's setup does not run
// again) under the node's name, with a new credential in its metadata,
// and the requeued task finishes there (see cloudtest.Deallocate).
func TestStopThenRestartKeepsNameAndDisk(t *testing.T) {
	c := startGCP(t)
	pool := gcpPool("gpu")
	pool.Spec.GCP.Setup = []string{`echo ran >>"$SPOTML_ROOT/setup.runs"`}
	var node string
	cloudtest.Deallocate{
		Plane: c.p,
		Pool:  pool,
		Evict: func(n string) error { node = n; return c.p.Plane.Evict(c.p.Ctx, n, 0) },
		VMID: func(n string) string {
			vm, ok := c.Instance(project, zone, n)
			if !ok {
				return ""
			}
			return strconv.FormatUint(vm.Proto().GetId(), 10)
		},
		Cleared: func(n string) bool {
			vm, ok := c.Instance(project, zone, n)
			_, has := vm.Metadata(gcpprov.KeyCredential)
			return ok && !has
		},
		Downloads: func() int { return int(c.downloads.Load()) },
		Dump:      c.vms.LogBoots,
	}.Run(t)
	if b, err := os.ReadFile(filepath.Join(c.vms.Dir, node, "setup.runs")); err != nil || string(b) != "ran\n" {
		t.Errorf("setup ran %q (%v), want once over both boots", b, err)
	}
}
