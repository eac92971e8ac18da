package kubetest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// binaries is where the cluster's programs are.
type binaries struct {
	dir                                                    string
	etcd, apiserver, controllerManager, scheduler, kubelet string
}

// findBinaries returns the binaries from SPOTML_KUBE_BIN (default
// build/kube/v1.37.2/bin of the repository), or why they cannot be used.
func findBinaries() (binaries, error) {
	dir := os.Getenv(envKubeBin)
	if dir == "" {
		_, file, _, _ := runtime.Caller(0)
		repo := filepath.Join(filepath.Dir(file), "..", "..")
		dir = filepath.Join(repo, "build", "kube", kubeVersion, "bin")
	}
	b := binaries{dir: dir}
	for _, p := range []struct {
		name string
		to   *string
	}{
		{"etcd", &b.etcd}, {"kube-apiserver", &b.apiserver},
		{"kube-controller-manager", &b.controllerManager},
		{"kube-scheduler", &b.scheduler}, {"kubelet", &b.kubelet},
	} {
		path := filepath.Join(dir, p.name)
		if _, err := os.Stat(path); err != nil {
			return b, fmt.Errorf("no %s in %s (SPOTML_KUBE_BIN): build the Kubernetes binaries with `bash scripts/kube-build.sh`", p.name, dir)
		}
		*p.to = path
	}
	return b, nil
}

// unavailable skips the test for reason, or fails it when the run requires
// the Kubernetes tests (SPOTML_REQUIRE_KUBE=1, as .ci/run sets).
func unavailable(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv(envRequire) == "1" {
		t.Fatalf("kubetest: %s (SPOTML_REQUIRE_KUBE=1 makes this a failure)", reason)
	}
	t.Skipf("kubetest: %s", reason)
}
