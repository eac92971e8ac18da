package e2e

import (
	"context"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/blob/blobtest"
)

// TestCheckpointsInS3 runs a checkpointing job under `spotml up` whose
// default blob store is an S3 bucket (gofakes3 in this test process, on
// loopback; spotml and its agents find credentials through the AWS default
// chain, here the environment). Its node is evicted mid-run: the tasks
// resume from the checkpoints they saved to S3, without a retry, and their
// outputs and logs land in the bucket, none on the local disk.
func TestCheckpointsInS3(t *testing.T) {
	s3 := blobtest.StartS3(t) // and AWS_ACCESS_KEY_ID etc., which spotml up inherits
	u, _ := url.Parse(s3.Bucket(t))
	u.Path = "/spotml"
	storeURL := u.String()
	c := newCluster(t, "--blob-store", storeURL)
	c.apply(spotPool("spot-s3", "aws", 1) + jobYAML("s3job", "pool: spot-s3", 2, 30, "0.15"))

	var node string
	waitFor(t, 30*time.Second, "tasks running", func() bool {
		for _, n := range c.nodes() {
			if n.Tasks == 2 && n.State == api.NodeReady {
				node = n.Name
				return true
			}
		}
		return false
	})
	time.Sleep(1500 * time.Millisecond) // progress worth keeping, checkpointed every 300ms
	c.mustCLI("evict", node, "--notice", "2s")
	if out, err := c.cli("wait", "job", "s3job", "--timeout", "90s", "-q"); err != nil {
		t.Fatalf("job did not succeed: %v\n%s\n%s", err, out, c.mustCLI("get", "tasks", "s3job"))
	}

	blobs, err := blob.NewStore(storeURL)
	if err != nil {
		t.Fatal(err)
	}
	defer blobs.Close()
	ctx := context.Background()
	var tasks []api.Task
	json.Unmarshal([]byte(c.mustCLI("get", "tasks", "s3job", "-o", "json")), &tasks)
	if len(tasks) != 2 {
		t.Fatalf("%d tasks", len(tasks))
	}
	for _, task := range tasks {
		if task.State != api.TaskSucceeded || task.Failures != 0 || task.Evictions != 1 || task.Attempt != 2 {
			t.Errorf("%s: state %s, attempt %d, %d evictions, %d failures; want succeeded on attempt 2 after 1 eviction, no failure",
				task.Name, task.State, task.Attempt, task.Evictions, task.Failures)
		}
		// The outputs are in the bucket: the history of starts the task
		// kept in its checkpoint shows the second attempt resumed past 0.
		hist, err := blobs.ReadAll(ctx, "outputs/s3job/out/"+task.Name+"/history.txt")
		if err != nil {
			t.Fatalf("outputs not in S3: %v", err)
		}
		starts := strings.Split(strings.TrimSpace(string(hist)), "\n")
		if len(starts) != 2 || starts[0] != "start 1 0" || strings.HasSuffix(starts[1], " 0") {
			t.Errorf("%s: history %q; want a first start at 0 and a second from the checkpoint", task.Name, hist)
		}
		if res, err := blobs.ReadAll(ctx, "outputs/s3job/out/"+task.Name+"/result.txt"); err != nil || !strings.Contains(string(res), "done") {
			t.Errorf("result.txt: %q %v", res, err)
		}
	}
	// The checkpoints and the logs are in the bucket too.
	objs, err := blobs.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var latest, logs int
	for _, o := range objs {
		switch {
		case strings.HasPrefix(o.Key, "checkpoints/s3job/") && strings.HasSuffix(o.Key, "/LATEST"):
			latest++
		case strings.HasPrefix(o.Key, "logs/") || strings.Contains(o.Key, ".log"):
			logs++
		}
	}
	if latest != 2 || logs == 0 {
		keys := []string{}
		for _, o := range objs {
			keys = append(keys, o.Key)
		}
		t.Errorf("bucket holds %d checkpoint LATESTs and %d logs, want 2 and some: %q", latest, logs, keys)
	}
	// The CLI reads them through the control plane, and the local disk
	// holds none of it.
	if out := c.mustCLI("blob", "ls", "outputs/s3job/"); !strings.Contains(out, "outputs/s3job/out/task-0/result.txt") {
		t.Errorf("spotml blob ls: %q", out)
	}
	if logs := c.mustCLI("logs", "s3job/task-0"); !strings.Contains(logs, "----- attempt 2 -----") {
		t.Errorf("spotml logs from S3 lack attempt 2:\n%s", logs)
	}
	if _, err := os.Stat(filepath.Join(c.data, "blobs")); !os.IsNotExist(err) {
		t.Errorf("DATA/blobs exists with an S3 store: %v", err)
	}
}
