package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/proc"
	"github.com/spotml/spotml/internal/spec"
)

// attempt is one run of one task on this node.
type attempt struct {
	a      *Agent
	as     api.Assignment
	ctx    context.Context
	cancel context.CancelFunc // stop without reporting (no longer assigned)

	mu        sync.Mutex
	cmd       *exec.Cmd
	group     proc.ID // the command's process group, once started
	finishing bool    // the process ended; outputs and report are under way

	progress progress // SPOTML_PROGRESS_FILE
}

func newAttempt(a *Agent, as api.Assignment) *attempt {
	ctx, cancel := context.WithCancel(context.Background())
	at := &attempt{a: a, as: as, ctx: ctx, cancel: cancel}
	at.progress.path = filepath.Join(at.logDir(), "progress")
	return at
}

// logDir is the agent's directory of this attempt (its stdout, stderr and
// progress file), outside the task's working directory.
func (at *attempt) logDir() string {
	return filepath.Join(at.a.cfg.WorkDir, "logs", at.as.Job, at.as.Task, "attempt-"+strconv.Itoa(at.as.Attempt))
}

// processGroup is the command's process group; zero before it starts.
func (at *attempt) processGroup() proc.ID {
	at.mu.Lock()
	defer at.mu.Unlock()
	return at.group
}

func (at *attempt) reporting() bool {
	at.mu.Lock()
	defer at.mu.Unlock()
	return at.finishing
}

// run prepares the working directory, runs the command, and ends the
// attempt: outputs by their upload condition, the checkpoint, the logs, and
// the report.
func (at *attempt) run(agentCtx context.Context) {
	defer at.cancel()
	go func() { // the agent stopping stops the attempt
		select {
		case <-agentCtx.Done():
			at.cancel()
		case <-at.ctx.Done():
		}
	}()
	a, as := at.a, at.as
	log := a.log.With("task", as.Job+"/"+as.Task, "attempt", as.Attempt)
	dir := filepath.Join(a.cfg.WorkDir, "tasks", as.Job, as.Task)
	logDir := at.logDir()
	fail := func(msg string, err error) {
		log.Error(msg, "err", err)
		a.report(agentCtx, as, api.OutcomeFailed, -1, fmt.Sprintf("%s: %v", msg, err))
	}
	if err := os.RemoveAll(dir); err != nil {
		fail("clean working directory", err)
		return
	}
	for _, d := range []string{dir, logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			fail("create working directory", err)
			return
		}
	}
	for _, rf := range as.Spec.ResourceFiles {
		if err := a.blobs.Download(at.ctx, rf.Source, filepath.Join(dir, rf.Path)); err != nil {
			fail("download resource file "+rf.Source, err)
			return
		}
	}
	var ckpt *blob.Checkpoint
	ckptDir := ""
	if c := as.Spec.Checkpoint; c != nil {
		ckptDir = filepath.Join(dir, c.Path)
		if err := os.MkdirAll(ckptDir, 0o755); err != nil {
			fail("create checkpoint directory", err)
			return
		}
		ckpt = a.blobs.Checkpoint(api.CheckpointLocation(as.Job, as.JobUID, as.Task), ckptDir)
		restored, err := ckpt.Restore(at.ctx)
		if err != nil {
			fail("restore checkpoint", err)
			return
		}
		log.Info("checkpoint", "restored", restored)
	}

	stdout, err1 := os.Create(filepath.Join(logDir, "stdout.log"))
	stderr, err2 := os.Create(filepath.Join(logDir, "stderr.log"))
	if err := errors.Join(err1, err2); err != nil {
		fail("create log files", err)
		return
	}
	defer stdout.Close()
	defer stderr.Close()

	argv, workerEnv, _, err := a.batchWorker(as)
	if err != nil {
		fail("start batch worker", err)
		return
	}
	if argv == nil {
		argv = as.Spec.Command
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.Env = append(Environ(os.Environ()),
		"SPOTML_TASK_INDEX="+strconv.Itoa(as.Index),
		"SPOTML_ATTEMPT="+strconv.Itoa(as.Attempt),
		"SPOTML_JOB="+as.Job,
		"SPOTML_TASK="+as.Task,
		"SPOTML_NODE="+a.cfg.Node,
		"SPOTML_CHECKPOINT_DIR="+ckptDir,
		"SPOTML_PROGRESS_FILE="+at.progress.path,
	)
	for k, v := range as.Spec.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Env = append(cmd.Env, workerEnv...)
	// Own process group: signals reach the whole task tree. Pdeathsig: if
	// the agent dies, so does the task, as on a machine that went away.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	at.mu.Lock()
	err = cmd.Start()
	at.cmd = cmd
	if err == nil {
		at.group = identify(cmd.Process.Pid)
	}
	at.mu.Unlock()
	if err != nil {
		fail("start command", err)
		return
	}
	a.writePIDs()
	log.Info("attempt started", "pid", cmd.Process.Pid, "dir", dir)

	uploadLogs := func(ctx context.Context) {
		// Both streams at once: each durable write waits on the disk.
		var wg sync.WaitGroup
		for _, s := range []string{"stdout", "stderr"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := a.blobs.UploadFile(ctx, filepath.Join(logDir, s+".log"), api.LogLocation(as.Job, as.JobUID, as.Task, as.Attempt, s)); err != nil {
					log.Warn("upload log", "stream", s, "err", err)
				}
			}()
		}
		wg.Wait()
	}
	saveCkpt := func(ctx context.Context, why string) {
		if ckpt == nil {
			return
		}
		n, err := ckpt.Save(ctx)
		if err != nil {
			log.Warn("checkpoint save failed", "why", why, "err", err)
			return
		}
		log.Info("checkpoint saved", "why", why, "files", n)
	}

	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	// Interval saves run beside the loop, one at a time: a durable save
	// waits on the disk, and an eviction notice must not wait for it to
	// reach the task. The token is held while one is in flight; the loop's
	// end waits for it.
	ckptIdle := make(chan struct{}, 1)
	ckptIdle <- struct{}{}
	var ckptTick <-chan time.Time
	if ckpt != nil {
		iv := as.Spec.Checkpoint.Interval.Duration
		if iv <= 0 {
			iv = 30 * time.Second
		}
		t := time.NewTicker(iv)
		defer t.Stop()
		ckptTick = t.C
	}
	logTick := time.NewTicker(a.cfg.LogUpload)
	defer logTick.Stop()

	preempted, cancelled := false, false
	var killAt <-chan time.Time
	var waitErr error
loop:
	for {
		select {
		case waitErr = <-exited:
			break loop
		case <-ckptTick:
			select {
			case <-ckptIdle:
				go func() {
					defer func() { ckptIdle <- struct{}{} }()
					saveCkpt(agentCtx, "interval")
				}()
			default: // the previous interval save is still going
			}
		case <-logTick.C:
			uploadLogs(agentCtx)
		case <-a.drainCh:
			if preempted {
				continue
			}
			preempted = true
			deadline := a.draining()
			// SIGKILL a little before the notice runs out, so that the
			// checkpoint upload still fits in the notice.
			margin := min(5*time.Second, time.Until(deadline)/3)
			killAt = time.After(max(time.Until(deadline)-margin, 0))
			log.Info("eviction notice: sending SIGTERM", "kill_in", time.Until(deadline)-margin)
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		case <-killAt:
			log.Warn("notice running out: sending SIGKILL")
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			killAt = nil
		case <-at.ctx.Done():
			if cancelled {
				continue
			}
			cancelled = true
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			killAt = time.After(10 * time.Second)
		}
	}
	// The group may hold children the command left behind.
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	at.mu.Lock()
	at.finishing = true
	at.mu.Unlock()
	code := exitCode(waitErr)
	if preempted && code != 0 {
		at.a.releaseBatchWorker(agentCtx, as, log)
	}
	var logsDone chan struct{}
	if preempted {
		// The notice leaves little time: the logs go up alongside the
		// checkpoint, and the report only once both are durable.
		logsDone = make(chan struct{})
		go func() {
			defer close(logsDone)
			uploadLogs(agentCtx)
		}()
	}
	<-ckptIdle // no interval save runs past here

	switch {
	case cancelled && !preempted:
		uploadLogs(agentCtx)
		log.Info("attempt stopped: no longer assigned")
	case preempted:
		saveCkpt(agentCtx, "eviction notice")
		<-logsDone
		at.a.report(agentCtx, as, api.OutcomePreempted, code, "stopped by eviction notice")
	default:
		outcome := api.OutcomeSucceeded
		msg := ""
		if code != 0 {
			outcome = api.OutcomeFailed
			msg = fmt.Sprintf("exit code %d", code)
			saveCkpt(agentCtx, "failure") // a retry resumes from here
		}
		// The report goes only after every output is durable (the blob
		// store syncs each object before its write returns), so a task
		// reported succeeded never has outputs a power cut could truncate.
		if err := at.uploadOutputs(agentCtx, dir, outcome); err != nil {
			outcome = api.OutcomeFailed
			msg = fmt.Sprintf("output upload failed: %v", err)
			if code == 0 {
				code = -1
			}
		}
		uploadLogs(agentCtx)
		at.a.report(agentCtx, as, outcome, code, msg)
	}
}

// uploadOutputs uploads each outputFiles entry whose condition holds.
func (at *attempt) uploadOutputs(ctx context.Context, dir, outcome string) error {
	var errs []error
	for _, of := range at.as.Spec.OutputFiles {
		cond := of.Upload
		if cond == "" {
			cond = spec.UploadOnSuccess
		}
		if (cond == spec.UploadOnSuccess && outcome != api.OutcomeSucceeded) || (cond == spec.UploadOnFailure && outcome != api.OutcomeFailed) {
			continue
		}
		keys, err := at.a.blobs.UploadGlob(ctx, dir, of.Pattern, of.Destination)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s -> %s: %w", of.Pattern, of.Destination, err))
			continue
		}
		at.a.log.Info("outputs uploaded", "pattern", of.Pattern, "destination", of.Destination, "files", len(keys))
	}
	return errors.Join(errs...)
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return -1
}
