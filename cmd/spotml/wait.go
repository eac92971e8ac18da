package main

import (
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
	start := time.Now()
	tty := isTerminal(progress)
	last, lastPrint := "", time.Time{}
	var lastErr error
	for {
		var j api.Job
		err := cl.Do(ctx, http.MethodGet, api.Prefix+"/jobs/"+url.PathEscape(name), nil, &j)
		if client.Code(err) == http.StatusNotFound {
			return exitError{1, err}
		}
		if err != nil {
			// The control plane may be restarting: keep waiting, but say so.
			if lastErr == nil {
				fmt.Fprintf(progress, "\nwaiting for the control plane: %v\n", err)
			}
			lastErr = err
		} else {
			lastErr = nil
			var s api.Cost
			cl.Do(ctx, http.MethodGet, api.Prefix+"/cost", nil, &s)
			line := progressLine(j, s, time.Since(start))
			// On a terminal the line redraws in place; in a log, a new line
			// when the counts change, and every 15 s.
			counts := line[:strings.Index(line, "|")]
			if tty {
				fmt.Fprintf(progress, "\r\033[K%s", line)
			} else if counts != last || time.Since(lastPrint) >= 15*time.Second {
				fmt.Fprintln(progress, line)
				last, lastPrint = counts, time.Now()
			}
			switch j.State {
			case api.JobSucceeded:
				if tty {
					fmt.Fprintln(progress)
				}
				fmt.Fprintf(stdout, "job/%s succeeded: %d tasks, %d evictions survived\n", name, len(j.Tasks), j.Evictions)
				return nil
			case api.JobFailed:
				if tty {
					fmt.Fprintln(progress)
				}
				var failed []string
				for _, t := range j.Tasks {
					if t.State == api.TaskFailed {
						failed = append(failed, fmt.Sprintf("%s (exit %d: %s)", t.Name, t.ExitCode, t.Message))
					}
				}
				return exitError{1, fmt.Errorf("job/%s failed: %s; see spotml logs %s/TASK --stderr", name, strings.Join(failed, ", "), name)}
			}
		}
		if timeout > 0 && time.Since(start) > timeout {
			if tty {
				fmt.Fprintln(progress)
			}
			return exitError{2, fmt.Errorf("job/%s still %s after %s", name, j.State, timeout)}
		}
		select {
		case <-ctx.Done():
			return exitError{2, errors.New("interrupted")}
		case <-time.After(time.Second):
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
