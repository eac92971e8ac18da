package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// loadStats counts one service's requests.
type loadStats struct {
	mu     sync.Mutex
	sent   int
	ok     int
	errs   map[string]int
	sample []string // the first failures, with their time
}

func newLoadStats() *loadStats { return &loadStats{errs: map[string]int{}} }

var loadClient = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second},
}

// runLoad sends cfg.Rate requests a second to the service through the
// separate gateway, open loop: each on time, whether or not earlier ones
// were answered. A request succeeds with 200 and the model's outputs.
func (s *soak) runLoad(ctx context.Context, service string, st *loadStats) {
	body, err := os.ReadFile(s.cfg.RequestFile)
	if err != nil {
		st.mu.Lock()
		st.errs["cannot read the request: "+err.Error()]++
		st.mu.Unlock()
		return
	}
	url := "http://" + s.gwAddr + "/v2/models/" + service + "/infer"
	every := time.Duration(float64(time.Second) / s.cfg.Rate)
	t := time.NewTicker(every)
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		wg.Go(func() {
			err := send(url, body)
			st.mu.Lock()
			defer st.mu.Unlock()
			st.sent++
			if err == nil {
				st.ok++
				return
			}
			st.errs[kind(err)]++
			if len(st.sample) < 10 {
				st.sample = append(st.sample, time.Now().Format("15:04:05.000")+" "+err.Error())
			}
		})
	}
}

func send(url string, body []byte) error {
	resp, err := loadClient.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return statusError{resp.StatusCode, strings.TrimSpace(string(b))}
	}
	if !bytes.Contains(b, []byte(`"outputs"`)) {
		return fmt.Errorf("200 without outputs: %.200s", b)
	}
	return nil
}

type statusError struct {
	code int
	body string
}

func (e statusError) Error() string { return fmt.Sprintf("%d: %.200s", e.code, e.body) }

func kind(err error) string {
	var se statusError
	var ne net.Error
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("status %d", se.code)
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case strings.Contains(err.Error(), "connection refused"):
		return "connection refused"
	case strings.Contains(err.Error(), "connection reset"), strings.Contains(err.Error(), "EOF"):
		return "connection reset"
	}
	return "other"
}

// checkLoad reports each service's success rate beside the faults it
// survived; strict must answer at least 99.9 %.
func (s *soak) checkLoad(rep *Report) {
	s.mu.Lock()
	survived := fmt.Sprintf("through %d evictions, %d node kills, %d replica kills, %d control-plane kills",
		s.faults["evictions"], s.faults["node kills"], s.faults["replica kills"], s.faults["control-plane kills"])
	s.mu.Unlock()
	for _, name := range []string{"strict", "prod"} {
		st := s.load[name]
		st.mu.Lock()
		rate := 0.0
		if st.sent > 0 {
			rate = float64(st.ok) / float64(st.sent)
		}
		var errs []string
		for k, n := range st.errs {
			errs = append(errs, fmt.Sprintf("%s ×%d", k, n))
		}
		sort.Strings(errs)
		detail := fmt.Sprintf("%.3f %% of %d requests answered (%g/s open loop), %s", 100*rate, st.sent, s.cfg.Rate, survived)
		if len(errs) > 0 {
			detail += "\nfailures: " + strings.Join(errs, ", ") + "\nfirst: " + strings.Join(st.sample, "\n       ")
		}
		st.mu.Unlock()
		if name == "strict" {
			rep.add("strict success rate ≥ 99.9 %", st.sent > 0 && rate >= 0.999, "%s", detail)
		} else {
			rep.info("prod success rate", "%s", detail)
		}
	}
}

// infer sends one request of the sample to the service through the
// separate gateway.
func (s *soak) infer(ctx context.Context, service string) error {
	body, err := os.ReadFile(s.cfg.RequestFile)
	if err != nil {
		return err
	}
	return send("http://"+s.gwAddr+"/v2/models/"+service+"/infer", body)
}
