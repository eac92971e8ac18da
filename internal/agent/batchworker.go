package agent

import (
	"fmt"
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
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, true, fmt.Errorf("find the spotml executable: %w", err)
	}
	env = []string{
		api.EnvBatch + "=" + batch,
		api.EnvServer + "=" + strings.Join(a.api.Servers(), ","),
		api.EnvWorkerCred + "=" + a.cfg.Credential,
		api.EnvBlobURL + "=" + a.blobs.DefaultURL(),
		api.EnvWorkerID + "=" + fmt.Sprintf("%s:%s/%s#%d", a.cfg.Node, as.Job, as.Task, as.Attempt),
	}
	return []string{exe, api.BatchWorkerCmd}, env, true, nil
}
