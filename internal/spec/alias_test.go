package spec

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// aliasBomb is a 63 KiB job whose one task, with 400 env entries, is
// listed again by alias 10,000 times: 4 M strings once every alias is
// expanded.
func aliasBomb() []byte {
	var b strings.Builder
	b.WriteString("apiVersion: spotml/v1\nkind: Job\nmetadata:\n  name: bomb\nspec:\n  pool: p\n  tasks:\n    - &t\n      name: t\n      command: [x]\n      env:\n")
	for i := range 400 {
		fmt.Fprintf(&b, "        K%d: v\n", i)
	}
	for range 10000 {
		b.WriteString("    - *t\n")
	}
	return []byte(b.String())
}

// TestAliasBomb: an alias that expands the document past the limit is an
// error naming its line, found without expanding it.
func TestAliasBomb(t *testing.T) {
	bomb := aliasBomb()
	_, err := Parse(bomb)
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("Parse(alias bomb) = %v, want a *spec.Error", err)
	}
	// Line 412 holds the first alias; each one adds the task's 808 nodes
	// (keys, values, the mapping and the list), so the 124th, on line
	// 412+123, is the first past 100,000.
	want := "line 535: spec.tasks[124]: alias *t expands the document past 100000 YAML nodes"
	if !strings.HasPrefix(e.Error(), want) {
		t.Errorf("Parse(alias bomb) = %q, want it to start %q", e.Error(), want)
	}
	allocs := testing.AllocsPerRun(1, func() { Parse(bomb) })
	// The literal document alone takes about 60,000 allocations to parse.
	if allocs > 200_000 {
		t.Errorf("Parse(alias bomb) made %.0f allocations, want under 200,000", allocs)
	}
}

// TestAliasCycles: merge keys that nest aliases, and aliases inside their
// own anchor, are errors too, not exponential time or a stack overflow.
func TestAliasCycles(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: spotml/v1\nkind: Pool\nspec:\n  provider: local\n  labels: &l0 {a: b}\n")
	for i := 1; i <= 12; i++ {
		fmt.Fprintf(&b, "x%d: &l%d {<<: [*l%d, *l%d, *l%d, *l%d]}\n", i, i, i-1, i-1, i-1, i-1)
	}
	b.WriteString("metadata:\n  name: p\n  labels: *l12\n")
	tests := []struct{ name, in, want string }{
		{"merge", b.String(), "alias *l"},
		{"self", "apiVersion: spotml/v1\nkind: Pool\nmetadata: &m\n  name: p\n  <<: *m\n", "line 5: metadata.<<: alias *m refers to a value that contains it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// BenchmarkParseAliasBomb: what refusing the 63 KiB alias bomb costs
// (go test -bench AliasBomb -benchmem ./internal/spec/).
func BenchmarkParseAliasBomb(b *testing.B) {
	bomb := aliasBomb()
	b.ReportAllocs()
	b.SetBytes(int64(len(bomb)))
	for b.Loop() {
		if _, err := Parse(bomb); err == nil {
			b.Fatal("the alias bomb parsed")
		}
	}
}
