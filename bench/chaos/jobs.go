package chaos

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/client"
	"github.com/spotml/spotml/internal/store"
)

// steps is how far every soak task counts, one step per 0.2 s.
const steps = 25

// counterTask counts to SOAK_STEPS. Its checkpoint is one file, seq.log,
// that holds a line "ATTEMPT STEP" for every step ever made; each step
// replaces it whole (copy, append, rename), so a snapshot of the
// checkpoint directory always holds a whole log, and the step to resume
// from is its last line. Each attempt also notes where it started in a
// ledger outside spotml (SOAK_LEDGER, on this machine). At the end the
// task writes the log and a data file whose content the soak knows:
// "JOB/TASK\n" repeated to 40000 + 977 × index bytes.
const counterTask = `c="$SPOTML_CHECKPOINT_DIR"
mkdir -p "$c" && touch "$c/seq.log"
i=$(tail -n 1 "$c/seq.log" | cut -d' ' -f2); i=${i:-0}
echo "$SPOTML_ATTEMPT $i" >> "$SOAK_LEDGER/$SPOTML_JOB.$SPOTML_TASK"
while [ "$i" -lt "$SOAK_STEPS" ]; do
  sleep 0.2
  i=$((i+1))
  cp "$c/seq.log" "$c/seq.tmp" && echo "$SPOTML_ATTEMPT $i" >> "$c/seq.tmp" && mv "$c/seq.tmp" "$c/seq.log"
done
mkdir -p "out/$SPOTML_TASK"
cp "$c/seq.log" "out/$SPOTML_TASK/seq.log"
yes "$SPOTML_JOB/$SPOTML_TASK" | head -c $((40000 + 977 * SPOTML_TASK_INDEX)) > "out/$SPOTML_TASK/data.bin"
`

// jobRecord is one job the soak submitted.
type jobRecord struct {
	name     string
	tasks    int
	failing  bool // its command exits 3: it must end failed, for that reason only
	accepted bool
	refused  string // why the API refused it
}

func indent(s, pre string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString(pre + line + "\n")
	}
	return b.String()
}

func (s *soak) jobYAML(j jobRecord) string {
	if j.failing {
		return fmt.Sprintf(`apiVersion: spotml/v1
kind: Job
metadata: {name: %s}
spec:
  priority: spot
  count: 1
  template:
    command: "echo failing on purpose; sleep 1; exit 3"
    maxRetries: 1
    resources: {cpu: 1, memory: 64Mi}
`, j.name)
	}
	return fmt.Sprintf(`apiVersion: spotml/v1
kind: Job
metadata: {name: %s}
spec:
  priority: spot
  count: %d
  template:
    command: |
%s    env: {SOAK_LEDGER: %q, SOAK_STEPS: "%d"}
    checkpoint: {path: ckpt, interval: 300ms}
    outputFiles:
      - {pattern: "out/**", destination: "outputs/%s/", upload: onSuccess}
    maxRetries: 4
    resources: {cpu: 1, memory: 128Mi}
`, j.name, j.tasks, indent(counterTask, "      "), s.ledger, steps, j.name)
}

// submitJobs submits a job every 8 s: two counting tasks, and every fifth
// job one task that fails by its own command.
func (s *soak) submitJobs(ctx context.Context) {
	for i := 1; ; i++ {
		j := jobRecord{name: fmt.Sprintf("soak-%03d", i), tasks: 2}
		if i%5 == 0 {
			j = jobRecord{name: fmt.Sprintf("soak-%03d-fails", i), tasks: 1, failing: true}
		}
		s.specMu.Lock()
		s.cpMu.RLock()
		var err error
		for try := 0; try < 20; try++ {
			_, err = s.apply(ctx, s.jobYAML(j))
			if err == nil || client.Code(err) != 0 || ctx.Err() != nil {
				break
			}
			time.Sleep(500 * time.Millisecond) // not reachable: try again
		}
		s.cpMu.RUnlock()
		s.specMu.Unlock()
		if ctx.Err() != nil {
			return
		}
		j.accepted = err == nil
		if err != nil {
			j.refused = err.Error()
			s.say("job %s refused: %v", j.name, err)
		}
		s.mu.Lock()
		s.jobs = append(s.jobs, j)
		s.faults["jobs submitted"]++
		s.mu.Unlock()
		if !sleep(ctx, 8*time.Second) {
			return
		}
	}
}

func (s *soak) acceptedJobs() []jobRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []jobRecord
	for _, j := range s.jobs {
		if j.accepted {
			out = append(out, j)
		}
	}
	return out
}

// expectedData is the content a task writes to data.bin.
func expectedData(job, task string, index int) []byte {
	line := []byte(job + "/" + task + "\n")
	size := 40000 + 977*index
	return bytes.Repeat(line, size/len(line)+1)[:size]
}

// checkJobs checks every accepted job: it ended; a counting job
// succeeded, with failures no more than the soak's kills of each task's
// process (so no eviction or node loss was counted as a failure); a
// failing job failed with exit code 3 after its retry; every output is in
// the blob store with the right checksum; and no checkpoint went
// backwards, by the ledger and by the log each task carried through its
// checkpoints.
func (s *soak) checkJobs(ctx context.Context, rep *Report) {
	s.mu.Lock()
	kills := maps.Clone(s.taskKills)
	var refused []string
	for _, j := range s.jobs {
		if !j.accepted {
			refused = append(refused, j.name+": "+j.refused)
		}
	}
	s.mu.Unlock()
	var (
		accepted                                []jobRecord = s.acceptedJobs()
		unfinished, wrongEnd, failureProblems   []string
		outputProblems, ckptProblems            []string
		tasks, succeeded, evictions, kills_     int
		failures, outputs, attempts, ledgerRows int
	)
	for _, jr := range accepted {
		var j store.Job
		if err := s.api.Do(ctx, http.MethodGet, api.Prefix+"/jobs/"+jr.name, nil, &j); err != nil {
			unfinished = append(unfinished, fmt.Sprintf("%s: %v", jr.name, err))
			continue
		}
		if j.State != store.JobSucceeded && j.State != store.JobFailed {
			unfinished = append(unfinished, fmt.Sprintf("%s: %s %v", jr.name, j.State, j.Counts))
			continue
		}
		for _, t := range j.Tasks {
			tasks++
			key := jr.name + "/" + t.Name
			evictions += t.Evictions
			kills_ += kills[key]
			attempts += t.Attempt
			if !jr.failing {
				failures += t.Failures
			}
			if jr.failing {
				if t.State != store.TaskFailed || t.Failures != t.MaxRetries+1 || t.ExitCode != 3 {
					wrongEnd = append(wrongEnd, fmt.Sprintf("%s: %s, %d failures (max retries %d), exit %d; want failed by exit 3 after %d failures",
						key, t.State, t.Failures, t.MaxRetries, t.ExitCode, t.MaxRetries+1))
				}
				continue
			}
			if t.State != store.TaskSucceeded {
				wrongEnd = append(wrongEnd, fmt.Sprintf("%s: %s (exit %d, %s) after %d failures, %d evictions, %d soak kills",
					key, t.State, t.ExitCode, t.Message, t.Failures, t.Evictions, kills[key]))
				continue
			}
			succeeded++
			if t.Failures > kills[key] {
				failureProblems = append(failureProblems, fmt.Sprintf("%s: %d failures but its process was SIGKILLed %d times (evictions %d, attempts %s)",
					key, t.Failures, kills[key], t.Evictions, describeAttempts(t.Attempts)))
			}
			prefix := "/blobs/outputs/" + jr.name + "/out/" + t.Name + "/"
			var data, log []byte
			if err := s.api.Do(ctx, http.MethodGet, api.Prefix+prefix+"data.bin", nil, &data); err != nil {
				outputProblems = append(outputProblems, fmt.Sprintf("%s data.bin: %v", key, err))
			} else if want := expectedData(jr.name, t.Name, t.Index); sha256.Sum256(data) != sha256.Sum256(want) {
				outputProblems = append(outputProblems, fmt.Sprintf("%s data.bin: sha256 %x (%d bytes), want %x (%d bytes)",
					key, sha256.Sum256(data), len(data), sha256.Sum256(want), len(want)))
			} else {
				outputs++
			}
			if err := s.api.Do(ctx, http.MethodGet, api.Prefix+prefix+"seq.log", nil, &log); err != nil {
				outputProblems = append(outputProblems, fmt.Sprintf("%s seq.log: %v", key, err))
			} else if p := checkSeqLog(log, t.Attempt); p != "" {
				ckptProblems = append(ckptProblems, key+" seq.log: "+p)
			} else {
				outputs++
			}
			n, p := checkLedger(filepath.Join(s.ledger, jr.name+"."+t.Name))
			ledgerRows += n
			if p != "" {
				ckptProblems = append(ckptProblems, key+" ledger: "+p)
			}
		}
	}
	rep.add("jobs finished", len(unfinished) == 0 && len(wrongEnd) == 0 && len(refused) == 0 && len(accepted) > 0,
		"%d jobs accepted (%d tasks), %d tasks succeeded, %d evictions and %d soak kills survived%s",
		len(accepted), tasks, succeeded, evictions, kills_, problems(append(append(unfinished, wrongEnd...), refused...)))
	rep.add("outputs and checksums", len(outputProblems) == 0 && outputs > 0,
		"%d output files read back from the blob store, each with the content its task was to write%s", outputs, problems(outputProblems))
	rep.add("checkpoints never went backwards", len(ckptProblems) == 0 && ledgerRows > 0,
		"%d attempts' starts in the ledger, every seq.log contiguous 1..%d%s", ledgerRows, steps, problems(ckptProblems))
	rep.add("evictions not counted as failures", len(failureProblems) == 0 && succeeded > 0,
		"%d failures over the %d counting tasks, none beyond the soak's %d kills of their processes; %d evictions, %d attempts%s",
		failures, succeeded, kills_, evictions, attempts, problems(failureProblems))
}

func describeAttempts(as []store.Attempt) string {
	var out []string
	for _, a := range as {
		out = append(out, fmt.Sprintf("%d:%s@%s(exit %d)", a.Attempt, a.Outcome, a.Node, a.ExitCode))
	}
	return "[" + strings.Join(out, " ") + "]"
}

// problems lists up to 10 problems on their own lines.
func problems(ps []string) string {
	if len(ps) == 0 {
		return ""
	}
	more := ""
	if len(ps) > 10 {
		more = fmt.Sprintf("\n... and %d more", len(ps)-10)
		ps = ps[:10]
	}
	return fmt.Sprintf("; %d problems:\n%s%s", len(ps), strings.Join(ps, "\n"), more)
}

// checkSeqLog checks a task's log: steps 1..steps, each once and in
// order, attempts never decreasing and none past the task's last.
func checkSeqLog(b []byte, lastAttempt int) string {
	sc := bufio.NewScanner(bytes.NewReader(b))
	step, attempt := 0, 0
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			return fmt.Sprintf("line %q is not ATTEMPT STEP", sc.Text())
		}
		a, err1 := strconv.Atoi(f[0])
		st, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			return fmt.Sprintf("line %q is not ATTEMPT STEP", sc.Text())
		}
		if st != step+1 {
			return fmt.Sprintf("step %d (attempt %d) follows step %d", st, a, step)
		}
		if a < attempt || a > lastAttempt {
			return fmt.Sprintf("attempt %d at step %d after attempt %d (last attempt %d)", a, st, attempt, lastAttempt)
		}
		step, attempt = st, a
	}
	if step != steps {
		return fmt.Sprintf("ends at step %d, want %d", step, steps)
	}
	return ""
}

// checkLedger checks the starts an attempt noted, in the order they ran:
// attempts increase and each starts where an earlier one got to or later.
func checkLedger(path string) (int, string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err.Error()
	}
	type start struct{ attempt, step int }
	var ss []start
	for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		var st start
		if _, err := fmt.Sscanf(line, "%d %d", &st.attempt, &st.step); err != nil {
			return len(ss), fmt.Sprintf("line %q: %v", line, err)
		}
		ss = append(ss, st)
	}
	for i := 1; i < len(ss); i++ {
		if ss[i].attempt <= ss[i-1].attempt || ss[i].step < ss[i-1].step {
			return len(ss), fmt.Sprintf("attempt %d started at step %d after attempt %d had started at step %d (all: %v)",
				ss[i].attempt, ss[i].step, ss[i-1].attempt, ss[i-1].step, ss)
		}
	}
	return len(ss), ""
}
