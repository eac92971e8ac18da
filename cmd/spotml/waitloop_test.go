package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/client"
)

// waitLoop keeps waiting through errors (saying so once), prints a log
// line only when the counts change, says what step says on stdout once
// done, and returns step's result.
func TestWaitLoop(t *testing.T) {
	var progress, stdout bytes.Buffer
	looks := 0
	steps := []func() (waitStep, error){
		func() (waitStep, error) { return waitStep{}, errors.New("connection refused") },
		func() (waitStep, error) { return waitStep{}, errors.New("connection refused") },
		func() (waitStep, error) { return waitStep{line: "1/2 done | 3s"}, nil },
		func() (waitStep, error) { return waitStep{line: "1/2 done | 4s"}, nil },
		func() (waitStep, error) {
			return waitStep{line: "2/2 done | 5s", done: true, said: "job/j succeeded", result: exitError{1, errors.New("r")}}, nil
		},
	}
	err := waitLoopEvery(t.Context(), &progress, &stdout, 0, time.Millisecond, func(time.Duration) (waitStep, error) {
		looks++
		return steps[looks-1]()
	}, func() string { return "never" })
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Errorf("result %v, want step's exit 1", err)
	}
	if got := strings.Count(progress.String(), "waiting for the control plane"); got != 1 {
		t.Errorf("said it was waiting %d times, want once:\n%s", got, progress.String())
	}
	if strings.Contains(progress.String(), "4s") || !strings.Contains(progress.String(), "2/2 done") {
		t.Errorf("progress %q: want a line per change of the counts", progress.String())
	}
	if stdout.String() != "job/j succeeded\n" {
		t.Errorf("stdout %q", stdout.String())
	}

	// A 404 ends the wait with exit 1; a timeout with exit 2 and still's words.
	err = waitLoopEvery(t.Context(), &progress, &stdout, 0, time.Millisecond, func(time.Duration) (waitStep, error) {
		return waitStep{}, &client.StatusError{Code: http.StatusNotFound, Message: "no job"}
	}, nil)
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Errorf("404: %v, want exit 1", err)
	}
	err = waitLoopEvery(context.Background(), &progress, &stdout, 5*time.Millisecond, time.Millisecond, func(time.Duration) (waitStep, error) {
		return waitStep{line: "0/1 | x"}, nil
	}, func() string { return "job/j still running" })
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), "job/j still running after 5ms") {
		t.Errorf("timeout: %v, want exit 2 naming the state", err)
	}
}
