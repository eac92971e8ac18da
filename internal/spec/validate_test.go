package spec

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestValidateJSON is how the server uses the package: JSON in, Default,
// Validate. Errors name fields but, with no lines to tell, print none.
func TestValidateJSON(t *testing.T) {
	tests := []struct {
		name string
		json string
		want string // the whole error text; empty for none
	}{
		{
			name: "good pool",
			json: `{"apiVersion":"spotml/v1","kind":"Pool","metadata":{"name":"gpu"},
				"spec":{"provider":"local","priority":"spot","instanceType":"x","max":1}}`,
		},
		{
			name: "bad pool",
			json: `{"apiVersion":"spotml/v1","kind":"Pool","metadata":{"name":"gpu"},
				"spec":{"provider":"ibm","priority":"ondemand","instanceType":"x","max":1,"local":{"notice":"1m"}}}`,
			want: `spec.provider: "ibm" is not supported yet; use "local", "kubernetes", "azure", "aws" or "gcp"` + "\n" +
				`spec.local: only allowed when provider is "local"; settings for provider "ibm" go in spec.ibm`,
		},
		{
			name: "market on demand",
			json: `{"apiVersion":"spotml/v1","kind":"Pool","metadata":{"name":"gpu"},
				"spec":{"provider":"local","priority":"ondemand","instanceType":"x","max":1,"local":{"notice":"1m"}}}`,
			want: `spec.local.notice: only allowed when priority is "spot"`,
		},
		{
			name: "good job",
			json: `{"apiVersion":"spotml/v1","kind":"Job","metadata":{"name":"j"},
				"spec":{"count":2,"template":{"command":"echo hi"}}}`,
		},
		{
			name: "bad job",
			json: `{"apiVersion":"spotml/v1","kind":"Job","metadata":{"name":"j"},
				"spec":{"tasks":[{"name":"a","command":["run"]},{"name":"a","command":[],"maxRetries":-1}]}}`,
			want: `spec.tasks[1].name: "a" is already the name of spec.tasks[0]` + "\n" +
				`spec.tasks[1].command: required` + "\n" +
				`spec.tasks[1].maxRetries: must be between 0 and 100, got -1`,
		},
		{
			name: "empty job",
			json: `{}`,
			want: `apiVersion: required; use "spotml/v1"` + "\n" +
				`kind: want "Job", got ""` + "\n" +
				`metadata.name: required` + "\n" +
				`spec: needs tasks, or count and template`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r resource = new(Job)
			if strings.Contains(tt.json, `"Pool"`) {
				r = new(Pool)
			}
			if err := json.Unmarshal([]byte(tt.json), r); err != nil {
				t.Fatal(err)
			}
			r.Default()
			err := r.Validate()
			got := ""
			if err != nil {
				got = err.Error()
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("errors.Is(err, ErrInvalid) is false")
				}
			}
			if got != tt.want {
				t.Errorf("Validate:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

func TestValidateWithoutDefault(t *testing.T) {
	// Validate accepts what Default would fill in.
	p := &Pool{APIVersion: APIVersion, Kind: KindPool, Metadata: Metadata{Name: "p"},
		Spec: PoolSpec{Provider: ProviderLocal, Priority: PrioritySpot, InstanceType: "x", Max: 1}}
	if err := p.Validate(); err != nil {
		t.Errorf("Validate before Default: %v", err)
	}
	j := &Job{APIVersion: APIVersion, Kind: KindJob, Metadata: Metadata{Name: "j"},
		Spec: JobSpec{Tasks: []TaskSpec{{Name: "a", Command: Command{"run"},
			OutputFiles: []OutputFile{{Pattern: "o", Destination: "d"}}, Checkpoint: &Checkpoint{Path: "c"}}}}}
	if err := j.Validate(); err != nil {
		t.Errorf("Validate before Default: %v", err)
	}
}

func TestDefaultIdempotent(t *testing.T) {
	docs, err := ParseFile("testdata/good/job-tasks.yaml")
	if err != nil {
		t.Fatal(err)
	}
	j := docs[0].Job
	before, _ := json.Marshal(j)
	j.Default()
	after, _ := json.Marshal(j)
	if string(before) != string(after) {
		t.Errorf("Default changed a defaulted job:\n%s\n%s", before, after)
	}
}

func TestExpandTasks(t *testing.T) {
	j := &Job{Spec: JobSpec{
		Pool:     "gpu",
		Priority: PrioritySpot,
		Count:    3,
		Template: &TaskSpec{
			Command:     Command{"run"},
			Env:         map[string]string{"A": "1"},
			OutputFiles: []OutputFile{{Pattern: "out/*", Destination: "r/"}},
			Checkpoint:  &Checkpoint{Path: "ckpt"},
			Priority:    PriorityOnDemand,
		},
	}}
	tasks := j.ExpandTasks()
	if len(tasks) != 3 {
		t.Fatalf("got %d tasks, want 3", len(tasks))
	}
	for i, task := range tasks {
		if want := "task-" + string(rune('0'+i)); task.Name != want {
			t.Errorf("task %d is named %q, want %q", i, task.Name, want)
		}
		if task.Pool != "gpu" || task.Priority != PriorityOnDemand {
			t.Errorf("task %d: pool %q priority %q; want the job's pool and its own priority", i, task.Pool, task.Priority)
		}
		if task.Resources.CPU != 1 || task.OutputFiles[0].Upload != UploadOnSuccess ||
			task.Checkpoint.Interval.Duration != 30*time.Second {
			t.Errorf("task %d is not defaulted: %+v", i, task)
		}
	}

	// The tasks share nothing with the job or each other.
	tasks[0].Env["A"] = "changed"
	tasks[0].Command[0] = "changed"
	tasks[0].OutputFiles[0].Pattern = "changed"
	tasks[0].Checkpoint.Path = "changed"
	if !reflect.DeepEqual(tasks[1].Env, map[string]string{"A": "1"}) || tasks[1].Command[0] != "run" ||
		tasks[1].OutputFiles[0].Pattern != "out/*" || tasks[1].Checkpoint.Path != "ckpt" {
		t.Errorf("tasks share memory: %+v", tasks[1])
	}
	if j.Spec.Template.Env["A"] != "1" || j.Spec.Template.Command[0] != "run" || j.Spec.Template.OutputFiles[0].Upload != "" {
		t.Errorf("ExpandTasks changed the template: %+v", j.Spec.Template)
	}

	if got := (&Job{}).ExpandTasks(); len(got) != 0 {
		t.Errorf("a job with no tasks expands to %d tasks", len(got))
	}
}
