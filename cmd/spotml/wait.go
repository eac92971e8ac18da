package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/client"
)

func newWaitCmd(g *globals, stdout, stderr io.Writer) *cobra.Command {
	var timeout time.Duration
	var quiet bool
	c := &cobra.Command{
		Use:   "wait job|batchinference NAME",
		Short: "Wait for a job, showing progress; exit 0 only when every task succeeded (1: failed, 2: timed out)",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			k, _ := kindOf(args[0])
			if k != "jobs" && k != "batchinferences" {
				return fmt.Errorf("wait %s: only jobs and batchinferences can be waited for (spotml wait job NAME)", args[0])
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			var progress io.Writer = stderr
			if quiet {
				progress = io.Discard
			}
			if k == "batchinferences" {
				return waitBatch(c.Context(), cl, args[1], timeout, progress, stdout)
			}
			return waitJob(c, cl, args[1], timeout, progress, stdout)
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (exit 2); 0 waits forever")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress line")
	return c
}

func waitJob(c *cobra.Command, cl *client.Client, name string, timeout time.Duration, progress, stdout io.Writer) error {
	ctx := c.Context()
	var j api.Job
	return waitLoop(ctx, progress, stdout, timeout, func(elapsed time.Duration) (waitStep, error) {
		j = api.Job{}
		if err := cl.Do(ctx, http.MethodGet, api.Prefix+"/jobs/"+url.PathEscape(name), nil, &j); err != nil {
			return waitStep{}, err
		}
		var s api.Cost
		cl.Do(ctx, http.MethodGet, api.Prefix+"/cost", nil, &s)
		st := waitStep{line: progressLine(j, s, elapsed)}
		switch j.State {
		case api.JobSucceeded:
			st.done, st.said = true, fmt.Sprintf("job/%s succeeded: %d tasks, %d evictions survived", name, len(j.Tasks), j.Evictions)
		case api.JobFailed:
			var failed []string
			for _, t := range j.Tasks {
				if t.State == api.TaskFailed {
					failed = append(failed, fmt.Sprintf("%s (exit %d: %s)", t.Name, t.ExitCode, t.Message))
				}
			}
			st.done, st.result = true, exitError{1, fmt.Errorf("job/%s failed: %s; see spotml logs %s/TASK --stderr", name, strings.Join(failed, ", "), name)}
		}
		return st, nil
	}, func() string { return fmt.Sprintf("job/%s still %s", name, j.State) })
}

// waitStep is what one look at the awaited object found: its progress
// line and, once it is done, what to say on stdout and the result.
type waitStep struct {
	line   string
	done   bool
	said   string
	result error
}

// waitLoop polls once a second with step until it says the object is
// done, says what step says, and returns step's result. It draws step's progress line: in place
// on a terminal; in a log, a new line when the counts (the line up to its
// first "|") change, and every 15 s. An error from step keeps it waiting
// (the control plane may be restarting), said once; a 404 ends it with
// exit 1, and timeout (if set) with exit 2 and still()'s words.
func waitLoop(ctx context.Context, progress, stdout io.Writer, timeout time.Duration,
	step func(elapsed time.Duration) (waitStep, error), still func() string) error {
	return waitLoopEvery(ctx, progress, stdout, timeout, time.Second, step, still)
}

// waitLoopEvery is waitLoop looking every interval.
func waitLoopEvery(ctx context.Context, progress, stdout io.Writer, timeout, interval time.Duration,
	step func(elapsed time.Duration) (waitStep, error), still func() string) error {
	start := time.Now()
	tty := isTerminal(progress)
	last, lastPrint := "", time.Time{}
	var lastErr error
	for {
		st, err := step(time.Since(start))
		if client.Code(err) == http.StatusNotFound {
			return exitError{1, err}
		}
		if err != nil {
			if lastErr == nil {
				fmt.Fprintf(progress, "\nwaiting for the control plane: %v\n", err)
			}
			lastErr = err
		} else {
			lastErr = nil
			counts, _, _ := strings.Cut(st.line, "|")
			if tty {
				fmt.Fprintf(progress, "\r\033[K%s", st.line)
			} else if counts != last || time.Since(lastPrint) >= 15*time.Second {
				fmt.Fprintln(progress, st.line)
				last, lastPrint = counts, time.Now()
			}
			if st.done {
				if tty {
					fmt.Fprintln(progress)
				}
				if st.said != "" {
					fmt.Fprintln(stdout, st.said)
				}
				return st.result
			}
		}
		if timeout > 0 && time.Since(start) > timeout {
			if tty {
				fmt.Fprintln(progress)
			}
			return exitError{2, fmt.Errorf("%s after %s", still(), timeout)}
		}
		select {
		case <-ctx.Done():
			return exitError{2, errors.New("interrupted")}
		case <-time.After(interval):
		}
	}
}

// progressLine is a bar with the figures a spot user watches.
func progressLine(j api.Job, s api.Cost, elapsed time.Duration) string {
	n := len(j.Tasks)
	done := j.Counts[api.TaskSucceeded] + j.Counts[api.TaskFailed]
	// Running tasks that report their progress fill the bar by that much.
	frac := float64(done)
	reported := ""
	for _, t := range j.Tasks {
		if t.State == api.TaskRunning && t.Progress != nil {
			frac += *t.Progress
			reported = fmt.Sprintf(" (%.0f%%)", 100*frac/float64(n))
		}
	}
	filled := 0.0
	if n > 0 {
		filled = frac / float64(n)
	}
	return fmt.Sprintf("[%s] %d/%d tasks done%s, %d running, %d pending, %d evictions | cost $%.4f (on-demand $%.4f) | %s",
		bar(filled), done, n, reported, j.Counts[api.TaskRunning], j.Counts[api.TaskPending], j.Evictions, s.Spent, s.OnDemand, elapsed.Round(time.Second))
}
