package poll

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// Every passes at once, again on the ticker, logs a failed pass and goes
// on, and returns nil once ctx ends.
func TestEvery(t *testing.T) {
	var mu sync.Mutex
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&syncWriter{mu: &mu, w: &logs}, nil))
	ctx, cancel := context.WithCancel(t.Context())
	passes := make(chan int, 10)
	n := 0
	done := make(chan error)
	go func() {
		done <- Every(ctx, 10*time.Millisecond, log, "test", func(context.Context) error {
			n++
			passes <- n
			if n == 1 {
				return errors.New("api down")
			}
			return nil
		})
	}()
	for want := 1; want <= 3; want++ {
		select {
		case got := <-passes:
			if got != want {
				t.Fatalf("pass %d, want %d", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no pass %d", want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Every returned %v once ctx ended, want nil", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "test pass failed") || !strings.Contains(logs.String(), "api down") {
		t.Errorf("the failed pass was not logged: %q", logs.String())
	}
}

type syncWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
