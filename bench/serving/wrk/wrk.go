// Package wrk runs the wrk HTTP benchmarking tool (Debian package wrk)
// with post.lua, which POSTs one JSON body over and over, and reads the
// figures the script prints at the end.
//
// wrk is closed loop: each connection sends its next request when the
// previous answer arrived, so Connections is the concurrency and the
// figures are the server's throughput at that concurrency and the latency
// it gives there.
package wrk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Script is the Lua script, relative to the repository root, where the
// benchmarks run from.
const Script = "bench/serving/wrk/post.lua"

// Options of one wrk run.
type Options struct {
	URL         string
	Body        string // file with the request body
	Threads     int
	Connections int
	Duration    time.Duration
	// CPUs, when set, pins wrk to these CPUs (taskset -c).
	CPUs string
	// Header, when set, is one more request header, "Name: value" (the
	// binary tensor extension's Inference-Header-Content-Length).
	Header string
}

// Result is one run's figures.
type Result struct {
	Command  string // as run, for the report
	Requests int64
	Elapsed  time.Duration
	RPS      float64
	P50, P90 time.Duration
	P99, Max time.Duration
	Mean     time.Duration
	Errors   int64  // connect, read, write, status and timeout errors together
	Detail   string // the errors by kind, when there were any
}

// report is the line post.lua prints.
type report struct {
	Requests      int64   `json:"requests"`
	DurationUs    int64   `json:"durationUs"`
	ConnectErrors int64   `json:"connectErrors"`
	ReadErrors    int64   `json:"readErrors"`
	WriteErrors   int64   `json:"writeErrors"`
	StatusErrors  int64   `json:"statusErrors"`
	Timeouts      int64   `json:"timeouts"`
	LatencyUs     latency `json:"latencyUs"`
}

type latency struct {
	P50, P90, P99, Max int64
	Mean               float64
}

// Available says whether wrk can be run, and how to get it if not.
func Available() error {
	if _, err := exec.LookPath("wrk"); err != nil {
		return errors.New("wrk not found: apt-get install wrk")
	}
	if _, err := os.Stat(Script); err != nil {
		return fmt.Errorf("%v: run from the root of the spotml repository", err)
	}
	return nil
}

// Run runs wrk once.
func Run(ctx context.Context, o Options) (Result, error) {
	args := []string{"wrk", "-t", strconv.Itoa(o.Threads), "-c", strconv.Itoa(o.Connections),
		"-d", strconv.Itoa(int(o.Duration.Seconds())) + "s", "--timeout", "10s", "-s", Script, o.URL, "--", o.Body}
	if o.Header != "" {
		args = append(args, o.Header)
	}
	if o.CPUs != "" {
		args = append([]string{"taskset", "-c", o.CPUs}, args...)
	}
	res := Result{Command: strings.Join(args, " ")}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return res, fmt.Errorf("%s: %v: %s%s", res.Command, err, out, stderr.Bytes())
	}
	var rep report
	found := false
	for _, line := range strings.Split(string(out), "\n") {
		if j, ok := strings.CutPrefix(line, "WRKJSON "); ok {
			if err := json.Unmarshal([]byte(j), &rep); err != nil {
				return res, fmt.Errorf("%s: reading its report %q: %w", res.Command, j, err)
			}
			found = true
		}
	}
	if !found {
		return res, fmt.Errorf("%s: no WRKJSON line in its output:\n%s", res.Command, out)
	}
	us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
	res.Requests = rep.Requests
	res.Elapsed = us(rep.DurationUs)
	if rep.DurationUs > 0 {
		res.RPS = float64(rep.Requests) / res.Elapsed.Seconds()
	}
	res.P50, res.P90, res.P99, res.Max = us(rep.LatencyUs.P50), us(rep.LatencyUs.P90), us(rep.LatencyUs.P99), us(rep.LatencyUs.Max)
	res.Mean = time.Duration(rep.LatencyUs.Mean * float64(time.Microsecond))
	res.Errors = rep.ConnectErrors + rep.ReadErrors + rep.WriteErrors + rep.StatusErrors + rep.Timeouts
	if res.Errors > 0 {
		res.Detail = fmt.Sprintf("connect %d, read %d, write %d, status %d, timeout %d",
			rep.ConnectErrors, rep.ReadErrors, rep.WriteErrors, rep.StatusErrors, rep.Timeouts)
	}
	return res, nil
}

// Ms formats a latency in milliseconds for a report.
func Ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 2, 64) + " ms"
}
