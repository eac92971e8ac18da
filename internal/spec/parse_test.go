package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite the .golden files in testdata")

// goldenDoc is what a good file's golden holds per document: the parsed,
// defaulted document and, for a job, the tasks it expands to, for a
// service its effective placement and replica range.
type goldenDoc struct {
	Document
	ExpandedTasks []TaskSpec        `json:"expandedTasks,omitempty"`
	Effective     *effectiveService `json:"effective,omitempty"`
}

type effectiveService struct {
	Placement   Placement `json:"placement"`
	MinReplicas int       `json:"minReplicas"`
	MaxReplicas int       `json:"maxReplicas"`
}

// TestParseGood parses each testdata/good/*.yaml and compares the documents,
// as indented JSON, with the .golden file beside it.
func TestParseGood(t *testing.T) {
	for _, file := range inputs(t, "good") {
		t.Run(filepath.Base(file), func(t *testing.T) {
			docs, err := ParseFile(file)
			if err != nil {
				t.Fatalf("ParseFile: %v", err)
			}
			out := []goldenDoc{}
			for _, d := range docs {
				g := goldenDoc{Document: d}
				if d.Job != nil {
					g.ExpandedTasks = d.Job.ExpandTasks()
				}
				if d.Service != nil {
					sp := &d.Service.Spec
					lo, hi := sp.ReplicaRange()
					g.Effective = &effectiveService{sp.ResolvedPlacement(), lo, hi}
				}
				out = append(out, g)
			}
			var got bytes.Buffer
			enc := json.NewEncoder(&got)
			enc.SetEscapeHTML(false)
			enc.SetIndent("", "  ")
			if err := enc.Encode(out); err != nil {
				t.Fatal(err)
			}
			compareGolden(t, file, got.Bytes())
		})
	}
}

// TestParseBad parses each testdata/bad/*.yaml and compares the error text
// with the .golden file beside it. Every error must name a field and a line.
func TestParseBad(t *testing.T) {
	for _, file := range inputs(t, "bad") {
		t.Run(filepath.Base(file), func(t *testing.T) {
			docs, err := ParseFile(file)
			if err == nil {
				t.Fatalf("ParseFile returned %d documents and no error", len(docs))
			}
			if docs != nil {
				t.Errorf("ParseFile returned documents with an error")
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error is %T, not *Error: %v", err, err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(err, ErrInvalid) is false")
			}
			// Only these are about a whole document rather than a field.
			noField := strings.HasPrefix(filepath.Base(file), "syntax") ||
				strings.HasPrefix(filepath.Base(file), "not-a-mapping")
			for _, fe := range e.Errors {
				if fe.Line <= 0 {
					t.Errorf("error without a line: %v", fe)
				}
				if fe.Field == "" && !noField {
					t.Errorf("error without a field: %v", fe)
				}
			}
			e.File = filepath.Base(file)
			compareGolden(t, file, []byte(e.Error()+"\n"))
		})
	}
}

// TestYAMLRoundTrip writes each good document back as YAML and parses it
// again: what comes back must be what went out.
func TestYAMLRoundTrip(t *testing.T) {
	for _, file := range inputs(t, "good") {
		t.Run(filepath.Base(file), func(t *testing.T) {
			docs, err := ParseFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			enc := yaml.NewEncoder(&buf)
			for _, d := range docs {
				if err := enc.Encode(docResource(d)); err != nil {
					t.Fatal(err)
				}
			}
			again, err := Parse(buf.Bytes())
			if err != nil {
				t.Fatalf("parsing the written YAML: %v\n%s", err, buf.String())
			}
			for i := range docs {
				docs[i].Line, again[i].Line = 0, 0
			}
			if !reflect.DeepEqual(docs, again) {
				t.Errorf("documents differ after a YAML round trip:\n%s", buf.String())
			}
		})
	}
}

// TestJSONRoundTrip is how the server sees documents: JSON in, Default,
// Validate. The JSON of a parsed document must come back the same.
func TestJSONRoundTrip(t *testing.T) {
	for _, file := range inputs(t, "good") {
		t.Run(filepath.Base(file), func(t *testing.T) {
			docs, err := ParseFile(file)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range docs {
				data, err := json.Marshal(d)
				if err != nil {
					t.Fatal(err)
				}
				var back Document
				dec := json.NewDecoder(bytes.NewReader(data))
				dec.DisallowUnknownFields()
				if err := dec.Decode(&back); err != nil {
					t.Fatal(err)
				}
				r := docResource(back)
				r.Default()
				if err := r.Validate(); err != nil {
					t.Errorf("Validate after a JSON round trip: %v", err)
				}
				if !reflect.DeepEqual(d, back) {
					t.Errorf("document differs after a JSON round trip:\n%s", data)
				}
			}
		})
	}
}

func TestParseEmpty(t *testing.T) {
	for _, in := range []string{"", "\n", "# nothing\n", "---\n---\n", "~\n"} {
		docs, err := Parse([]byte(in))
		if err != nil || len(docs) != 0 {
			t.Errorf("Parse(%q) = %v, %v; want no documents and no error", in, docs, err)
		}
	}
}

func TestParseFileMissing(t *testing.T) {
	_, err := ParseFile(filepath.Join(t.TempDir(), "missing.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err = %v, want one that is os.ErrNotExist", err)
	}
	if errors.Is(err, ErrInvalid) {
		t.Errorf("a missing file is not an invalid spec")
	}
}

func TestDidYouMean(t *testing.T) {
	fields := yamlFields(reflect.TypeFor[JobSpec]())
	tests := []struct{ key, want string }{
		{"tempalte", `unknown field (did you mean "template"?)`},
		{"Tasks", `unknown field (did you mean "tasks"?)`},
		{"prority", `unknown field (did you mean "priority"?)`},
		{"cuont", `unknown field (did you mean "count"?)`},
		{"replicas", "unknown field; known fields are pool, priority, tasks, count, template, deadline, policy, work, onDemandAfterPreemptions"},
		{"x", "unknown field; known fields are pool, priority, tasks, count, template, deadline, policy, work, onDemandAfterPreemptions"},
	}
	for _, tt := range tests {
		if got, _ := unknownField(tt.key, fields); got != tt.want {
			t.Errorf("unknownField(%q) = %q, want %q", tt.key, got, tt.want)
		}
	}
}

// docResource returns the one resource a document holds.
func docResource(d Document) resource {
	switch {
	case d.Job != nil:
		return d.Job
	case d.Service != nil:
		return d.Service
	}
	return d.Pool
}

func inputs(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no inputs in testdata/%s: %v", dir, err)
	}
	return files
}

func compareGolden(t *testing.T, input string, got []byte) {
	t.Helper()
	golden := strings.TrimSuffix(input, ".yaml") + ".golden"
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from %s:\n--- got\n%s--- want\n%s", input, golden, got, want)
	}
}
