package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestAutoscaleOnInFlight: heavy requests (32 images each) from a few
// clients at a time come at a rate far below the service's target QPS per
// replica, so QPS alone would keep one replica; the requests in flight are
// above the concurrency target, and the autoscaler adds replicas, saying
// so in the Scaled event that `spotml describe service` shows. The test
// asserts the decision and its reason, not how fast it came.
func TestAutoscaleOnInFlight(t *testing.T) {
	requireORT(t)
	xs, _ := testSet(t, 32)
	c := newServingCluster(t)
	c.putModel("models/m.onnx")
	const targetQPS = 5000
	scale := fmt.Sprintf(", targetQPSPerReplica: %d, targetInFlightPerReplica: 1, upscaleDelay: 1s, downscaleDelay: 10m", targetQPS)
	c.apply(pool("spot-a", "spot", 3) + serviceYAML("heavy", "models/m.onnx", "dev", 1, 3, scale))
	c.waitServing("heavy", 1, 120*time.Second)

	// Four clients, each sending a 32-image batch as soon as the last is
	// answered: about four requests in flight, whatever their speed.
	body := v2Body(xs)
	l := startBatchLoad(c.gw, "heavy", body, 4)
	defer l.stop()

	var scaled string
	waitFor(t, 180*time.Second, "a Scaled event of service heavy", func() bool {
		scaled = scaledLine(c.mustCLI("describe", "service", "heavy"))
		return scaled != ""
	})
	l.finish(t)
	t.Logf("decision: %s", scaled)
	s := c.service("heavy")
	t.Logf("service heavy: desired %d, %.1f QPS, %.2f in flight, p99 %.3fs; %d batches answered",
		s.Desired, s.QPS, s.InFlight, s.P99, l.ok.Load())
	// The decision grew the service, on in-flight requests, with QPS
	// alone asking for one replica.
	if !strings.Contains(scaled, "1 → ") || !strings.Contains(scaled, ": in-flight ") {
		t.Errorf("Scaled event %q: want 1 → N replicas on in-flight requests", scaled)
	}
	if !strings.Contains(scaled, "qps → 1") {
		t.Errorf("Scaled event %q: want QPS's own recommendation, 1 replica, beside it", scaled)
	}
	if s.Desired < 2 {
		t.Errorf("desired %d after a scale-up, want at least 2", s.Desired)
	}
	if s.QPS >= targetQPS {
		t.Errorf("QPS %.1f: the load was meant to stay below the target of %d per replica", s.QPS, targetQPS)
	}
}

// scaledLine returns the first Scaled event line of `spotml describe`'s
// output, or "".
func scaledLine(describe string) string {
	for _, l := range strings.Split(describe, "\n") {
		if strings.Contains(l, " Scaled ") && strings.Contains(l, "service/heavy") {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// batchLoad is a closed loop of clients each posting the same KServe v2
// body through the gateway as soon as the last answer came.
type batchLoad struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	done       chan struct{}
	once       sync.Once
	wg         sync.WaitGroup
}

func startBatchLoad(gw, model string, body []byte, clients int) *batchLoad {
	l := &batchLoad{done: make(chan struct{})}
	url := "http://" + gw + "/v2/models/" + model + "/infer"
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.done:
					return
				default:
				}
				resp, err := http.Post(url, "application/json", bytes.NewReader(body))
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("%s: %.200s", resp.Status, b)
					}
				}
				if err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.errs) < 10 {
						l.errs = append(l.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
					}
					l.mu.Unlock()
					time.Sleep(50 * time.Millisecond)
					continue
				}
				l.ok.Add(1)
			}
		}()
	}
	return l
}

func (l *batchLoad) stop() {
	l.once.Do(func() { close(l.done) })
	l.wg.Wait()
}

// finish stops the load and fails the test if a batch failed.
func (l *batchLoad) finish(t *testing.T) {
	t.Helper()
	l.stop()
	if n := l.failed.Load(); n > 0 {
		t.Errorf("%d batches failed; first ones:\n%s", n, strings.Join(l.errs, "\n"))
	}
	if l.ok.Load() == 0 {
		t.Error("no batch was answered")
	}
}
