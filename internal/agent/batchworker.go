package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/spotml/spotml/internal/api"
)

// batchWorker returns the command and extra environment of a
// BatchInference worker task (a task of an api.BatchWorkerJob job): this
// binary's `spotml batch-worker`, which leases items over the API with the
// node's credential. The credential goes only to spotml's own code; a
// user's command never gets it (Environ).
func (a *Agent) batchWorker(as api.Assignment) (argv, env []string, ok bool, err error) {
	batch, ok := api.BatchOfJob(as.Job)
	if !ok {
		return nil, nil, false, nil
	}
	argv = a.cfg.BatchWorker
	if len(argv) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, nil, true, fmt.Errorf("find the spotml executable: %w", err)
		}
		argv = []string{exe, api.BatchWorkerCmd}
	}
	env = []string{
		api.EnvBatch + "=" + batch,
		api.EnvServer + "=" + strings.Join(a.api.Servers(), ","),
		api.EnvWorkerCred + "=" + a.cfg.Credential,
		api.EnvBlobURL + "=" + a.blobs.DefaultURL(),
		api.EnvWorkerID + "=" + a.workerID(as),
	}
	return argv, env, true, nil
}

// workerID is the lease holder of a worker task's attempt:
// NODE:JOB/TASK#ATTEMPT.
func (a *Agent) workerID(as api.Assignment) string {
	return fmt.Sprintf("%s:%s/%s#%d", a.cfg.Node, as.Job, as.Task, as.Attempt)
}

// releaseBatchWorker gives back at once whatever a BatchInference worker
// still held when its node's notice ran out and it was killed: the control
// plane would otherwise wait out the leases. A worker that exits by itself
// has released or acked all it leased. A crash is left to the leases: an
// expired lease counts as an attempt, so an input that crashes its
// workers is failed after maxAttempts, while a release does not count.
func (a *Agent) releaseBatchWorker(ctx context.Context, as api.Assignment, log *slog.Logger) {
	batch, ok := api.BatchOfJob(as.Job)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, tryTimeout)
	defer cancel()
	var resp api.BatchCounts
	err := a.api.Do(ctx, http.MethodPost, api.Prefix+"/agent/batches/"+url.PathEscape(batch)+"/release",
		api.ReleaseRequest{Worker: a.workerID(as), All: true}, &resp)
	if err != nil {
		log.Warn("cannot give back the worker's items; they come back when their leases run out", "err", err)
		return
	}
	if resp.Changed > 0 {
		log.Info("gave back the items the worker held", "items", resp.Changed)
	}
}
