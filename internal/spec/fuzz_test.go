package spec

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: no input, however malformed or hostile (aliases, cycles,
// deep nesting), makes Parse panic or run away; it returns documents or a
// *Error whose every entry says what is wrong, never both. Seeds: every
// testdata/good and testdata/bad file, and testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	for _, dir := range []string{"good", "bad"} {
		files, _ := filepath.Glob(filepath.Join("testdata", dir, "*.yaml"))
		for _, file := range files {
			b, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, err := Parse(data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || len(e.Errors) == 0 || docs != nil {
				t.Fatalf("Parse = %d documents, %v; want none and a *spec.Error", len(docs), err)
			}
			for _, fe := range e.Errors {
				if fe.Msg == "" || fe.Line < 0 {
					t.Fatalf("error without a message or with line %d: %+v", fe.Line, fe)
				}
			}
			return
		}
		for _, d := range docs {
			// What the server stores and the API returns.
			if _, err := json.Marshal(d); err != nil {
				t.Fatalf("document %s/%s does not encode: %v", d.Kind, d.Name, err)
			}
			if d.Job != nil {
				d.Job.ExpandTasks()
			}
			if d.Service != nil {
				d.Service.Spec.ResolvedPlacement()
				d.Service.Spec.ReplicaRange()
			}
		}
	})
}
