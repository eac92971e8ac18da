package agent

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/spotml/spotml/internal/api"
)

// A task reports how far it is by writing one line to the file named by
// SPOTML_PROGRESS_FILE, replacing what was there:
//
//	0.42 epoch 2/5, loss 0.31     a fraction, then a message
//	42% epoch 2/5                 a percentage
//	300/1000 steps                done/total
//
// The agent reads it at each heartbeat and sends it when it changed.

// progress is an attempt's progress file and what was last sent of it.
type progress struct {
	path string

	mu    sync.Mutex
	acked api.Progress // last value the control plane took
	sent  bool
}

// changed returns the file's progress when it differs from what the
// control plane has; nil when unchanged, missing or unreadable.
func (p *progress) changed() *api.Progress {
	b, err := os.ReadFile(p.path)
	if err != nil {
		return nil
	}
	v, err := parseProgress(string(b))
	if err != nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sent && p.acked == v {
		return nil
	}
	return &v
}

// ack records that the control plane took v.
func (p *progress) ack(v api.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.acked, p.sent = v, true
}

// parseProgress reads the first line of a progress file.
func parseProgress(s string) (api.Progress, error) {
	line, _, _ := strings.Cut(s, "\n")
	line = strings.TrimSpace(line)
	first, msg, _ := strings.Cut(line, " ")
	var f float64
	var err error
	switch {
	case first == "":
		return api.Progress{}, fmt.Errorf("empty progress")
	case strings.HasSuffix(first, "%"):
		f, err = strconv.ParseFloat(strings.TrimSuffix(first, "%"), 64)
		f /= 100
	case strings.Contains(first, "/"):
		done, total, _ := strings.Cut(first, "/")
		var d, t float64
		d, err = strconv.ParseFloat(done, 64)
		if err == nil {
			t, err = strconv.ParseFloat(total, 64)
		}
		if err == nil && t <= 0 {
			err = fmt.Errorf("total %q is not positive", total)
		}
		f = d / t
	default:
		f, err = strconv.ParseFloat(first, 64)
	}
	if err != nil || f != f { // f != f: NaN
		return api.Progress{}, fmt.Errorf("progress %q: write a fraction (0.42), a percentage (42%%) or done/total (300/1000) first", first)
	}
	f = min(max(f, 0), 1)
	msg = strings.TrimSpace(msg)
	if len(msg) > api.MaxProgressMessage {
		msg = msg[:api.MaxProgressMessage]
		for !utf8.ValidString(msg) {
			msg = msg[:len(msg)-1]
		}
	}
	return api.Progress{Fraction: f, Message: msg}, nil
}
