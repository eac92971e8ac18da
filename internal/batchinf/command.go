package batchinf

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/inference"
	"github.com/spotml/spotml/internal/spec"
)

// command is runtime command: the user's model server, started by the
// worker on 127.0.0.1:$PORT and sent each batch as one KServe v2 (Open
// Inference Protocol) HTTP inference request, the contract a Service's
// command replica keeps. One protocol for both means a server written
// for a Service scores a BatchInference unchanged, and batches go as one
// request each rather than an item per line on stdin.
type command struct {
	cmd    *exec.Cmd
	exited chan error
	base   string // http://127.0.0.1:PORT/v2/models/BATCH
	in     inference.TensorInfo
	client *http.Client
}

// startCommand starts the server and waits until it answers
// /v2/health/ready, then reads its input from the model's metadata.
func startCommand(ctx context.Context, cfg Config, rt spec.BatchRuntime, modelPath string) (*command, error) {
	port := rt.Port
	if port == 0 {
		var err error
		if port, err = freePort(); err != nil {
			return nil, err
		}
	}
	argv := rt.Command
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = cfg.Dir
	cmd.Stdout, cmd.Stderr = cfg.Stderr, cfg.Stderr
	cmd.Env = append(userEnviron(os.Environ()),
		spec.EnvPort+"="+strconv.Itoa(port),
		spec.EnvModelPath+"="+modelPath,
		api.EnvBatch+"="+cfg.Batch,
	)
	for k, v := range rt.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	// Its own process group, killed with the worker.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	c := &command{cmd: cmd, exited: make(chan error, 1), client: &http.Client{Timeout: 5 * time.Minute},
		base: "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) + "/v2/models/" + url.PathEscape(cfg.Batch)}
	go func() { c.exited <- cmd.Wait() }()
	cfg.Log.Info("command runtime started", "pid", cmd.Process.Pid, "port", port)
	if err := c.waitReady(ctx, "http://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(port))+"/v2/health/ready", rt.StartTimeout.Duration); err != nil {
		c.Close()
		return nil, err
	}
	c.in = c.metadata(ctx)
	return c, nil
}

func (c *command) waitReady(ctx context.Context, ready string, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = spec.DefaultBatchStartTimeout
	}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case err := <-c.exited:
			c.exited <- err
			return fmt.Errorf("the server exited before it was ready: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ready, nil)
		resp, err := c.client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s answered %s", ready, resp.Status)
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the server did not answer GET /v2/health/ready with 200 within %s (spec.runtime.startTimeout): %v", timeout, last)
}

// v2Tensor is a KServe v2 JSON tensor, its data flat.
type v2Tensor struct {
	Name     string    `json:"name"`
	Shape    []int64   `json:"shape"`
	Datatype string    `json:"datatype"`
	Data     []float64 `json:"data"`
}

// metadata reads the model's first input from GET /v2/models/NAME. A
// server that does not describe its model gets rows named "input",
// unchecked.
func (c *command) metadata(ctx context.Context) inference.TensorInfo {
	info := inference.TensorInfo{Name: "input"}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.base, nil)
	resp, err := c.client.Do(req)
	if err != nil {
		return info
	}
	defer resp.Body.Close()
	var md struct {
		Inputs []struct {
			Name     string  `json:"name"`
			Datatype string  `json:"datatype"`
			Shape    []int64 `json:"shape"`
		} `json:"inputs"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&md) != nil || len(md.Inputs) == 0 || md.Inputs[0].Name == "" {
		return info
	}
	in := md.Inputs[0]
	info.Name = in.Name
	if len(in.Shape) >= 2 {
		info.Shape = in.Shape
	}
	return info
}

func (c *command) Input() inference.TensorInfo { return c.in }

// Predict sends one batch as one inference request. A 4xx answer is the
// server refusing the input (the items fail with its message); anything
// else that is not a 200 is an error (the worker gives its items back).
func (c *command) Predict(ctx context.Context, inputs []inference.Tensor) ([]inference.Tensor, error) {
	var req struct {
		Inputs []v2Tensor `json:"inputs"`
	}
	for _, t := range inputs {
		rows, ok := t.Data.([]float32)
		if !ok {
			return nil, fmt.Errorf("input %q is %s, not FP32", t.Name, t.DataType())
		}
		data := make([]float64, len(rows))
		for i, v := range rows {
			data[i] = roundFloat32(v)
		}
		req.Inputs = append(req.Inputs, v2Tensor{Name: t.Name, Shape: t.Shape, Datatype: "FP32", Data: data})
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/infer", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := c.client.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("the command runtime: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, err
	}
	switch {
	case resp.StatusCode >= 400 && resp.StatusCode < 500:
		return nil, fmt.Errorf("%w: the server answered %s: %s", inference.ErrInvalidInput, resp.Status, serverError(b))
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("the command runtime answered %s: %s", resp.Status, serverError(b))
	}
	var out struct {
		Outputs []v2Tensor `json:"outputs"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("the command runtime's answer is not a KServe v2 inference response: %w", err)
	}
	if len(out.Outputs) == 0 {
		return nil, errors.New("the command runtime's answer has no outputs")
	}
	rows := inputs[0].Shape[0]
	outs := make([]inference.Tensor, len(out.Outputs))
	for i, o := range out.Outputs {
		if len(o.Shape) == 0 || o.Shape[0] != rows {
			return nil, fmt.Errorf("output %q has shape %v; want %d rows first, one per input", o.Name, o.Shape, rows)
		}
		outs[i] = inference.Tensor{Name: o.Name, Shape: o.Shape, Data: o.Data}
	}
	return outs, nil
}

// Close stops the server: SIGTERM to its group, SIGKILL after 5s.
func (c *command) Close() {
	pid := c.cmd.Process.Pid
	syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case err := <-c.exited:
		c.exited <- err
	case <-time.After(5 * time.Second):
		syscall.Kill(-pid, syscall.SIGKILL)
	}
}

func serverError(b []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return e.Error
	}
	return strings.TrimSpace(string(b[:min(len(b), 500)]))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// userEnviron is the worker's environment without spotml's secrets (the
// node's credential the worker leases with): a user's command never gets
// them.
func userEnviron(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "SPOTML_") && (strings.Contains(name, "TOKEN") || strings.Contains(name, "CREDENTIAL")) {
			continue
		}
		out = append(out, kv)
	}
	return out
}
