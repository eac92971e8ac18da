// Package kubetest runs a real Kubernetes v1.37.2 control plane for tests:
// etcd, kube-apiserver, kube-scheduler and kube-controller-manager built by
// scripts/kube-build.sh, inside a network namespace the test binary makes for
// itself. On top of it the harness plays further nodes (a Node registered
// through the real API whose kubelet the harness plays, running each bound
// pod's containers as local runc containers and writing their status back) and
// plays the cloud platform's part in evictions (taints, cordons,
// DisruptionTarget, the Eviction API, Node deletion, a node dying), each
// through the apiserver exactly as the platform's component would. With
// Options.RealKubelet it also runs containerd and a real kubelet.
//
// A test package that uses it runs its tests through Main:
//
//	func TestMain(m *testing.M) { kubetest.Main(m) }
//
//	func TestX(t *testing.T) {
//		c := kubetest.Start(t, kubetest.Options{})
//		n, err := c.AddNode(kubetest.NodeOptions{Name: "spot-1", Labels: ...})
//		...
//		c.Client.CoreV1().Pods("default").Create(...)
//	}
//
// Without the binaries (SPOTML_KUBE_BIN, default build/kube/v1.37.2/bin of the
// repository) Start skips the test, naming the script that builds them; with
// SPOTML_REQUIRE_KUBE=1 it fails instead. The package is for tests only.
package kubetest
