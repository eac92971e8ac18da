package kubetest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/kubetest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// BenchmarkClusterStart: a cold control plane to ready (etcd, apiserver,
// scheduler, controller-manager, default service account), and the
// resident memory of each piece once it is up. Each iteration's cluster
// lives until the benchmark ends, so run it once:
//
//	go test ./internal/kubetest -run '^$' -bench ClusterStart -benchtime 1x
func BenchmarkClusterStart(b *testing.B) {
	var rss map[string]int64
	for range b.N {
		start := time.Now()
		c := kubetest.Start(b, kubetest.Options{})
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms/start")
		rss = c.RSS()
	}
	for name, v := range rss {
		b.ReportMetric(float64(v)/(1<<20), "MB-rss-"+name)
	}
}

// BenchmarkPlayedPodRunning: a pod's create to Running and Ready on a
// played node (scheduler, binding, the played kubelet's runc container and
// status write).
//
//	go test ./internal/kubetest -run '^$' -bench PlayedPodRunning -benchtime 20x
func BenchmarkPlayedPodRunning(b *testing.B) {
	c := kubetest.Start(b, kubetest.Options{})
	dir := b.TempDir()
	if err := kubetest.BuildImage(dir, nil); err != nil {
		b.Fatal(err)
	}
	if err := c.ImportImage("kubetest/busybox:1", dir); err != nil {
		b.Fatal(err)
	}
	if _, err := c.AddNode(kubetest.NodeOptions{Name: "n1"}); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	pods := c.Client.CoreV1().Pods("default")
	b.ResetTimer()
	for i := range b.N {
		name := fmt.Sprintf("p%d", i)
		if _, err := pods.Create(ctx, shPod(name, "n1", "kubetest/busybox:1", "sleep 1000", 0), metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			p, err := pods.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			for _, cond := range p.Status.Conditions {
				if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			b.Fatalf("pod %s never Ready: %v", name, err)
		}
	}
	b.StopTimer()
	for name, v := range c.RSS() {
		b.ReportMetric(float64(v)/(1<<20), "MB-rss-"+name)
	}
}
