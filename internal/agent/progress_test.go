package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spotml/spotml/internal/api"
)

func TestParseProgress(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want api.Progress
		err  bool
	}{
		{in: "0.42 epoch 2/5, loss 0.31\n", want: api.Progress{Fraction: 0.42, Message: "epoch 2/5, loss 0.31"}},
		{in: "42% epoch 2/5", want: api.Progress{Fraction: 0.42, Message: "epoch 2/5"}},
		{in: "300/1000 steps", want: api.Progress{Fraction: 0.3, Message: "steps"}},
		{in: "  1  \nsecond line ignored", want: api.Progress{Fraction: 1}},
		{in: "1.5 over", want: api.Progress{Fraction: 1, Message: "over"}},
		{in: "-3", want: api.Progress{Fraction: 0}},
		{in: "", err: true},
		{in: "halfway", err: true},
		{in: "NaN", err: true},
		{in: "3/0", err: true},
		{in: "x%", err: true},
	} {
		got, err := parseProgress(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseProgress(%q) = %+v, %v; want %+v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
	long, err := parseProgress("0.5 " + strings.Repeat("é", 200))
	if err != nil || len(long.Message) > api.MaxProgressMessage || !strings.HasPrefix(long.Message, "é") || strings.ContainsRune(long.Message, '\uFFFD') {
		t.Errorf("long message cut to %d bytes: %q, %v", len(long.Message), long.Message, err)
	}
}

// A progress file is sent once per change, and again until acknowledged.
func TestProgressChanged(t *testing.T) {
	p := &progress{path: filepath.Join(t.TempDir(), "progress")}
	if v := p.changed(); v != nil {
		t.Fatalf("no file: %+v", v)
	}
	os.WriteFile(p.path, []byte("0.1 start\n"), 0o644)
	v := p.changed()
	if v == nil || v.Fraction != 0.1 {
		t.Fatalf("new file: %+v", v)
	}
	if again := p.changed(); again == nil { // not acknowledged yet: sent again
		t.Fatal("unacknowledged progress not sent again")
	}
	p.ack(*v)
	if v := p.changed(); v != nil {
		t.Errorf("unchanged after ack: %+v", v)
	}
	os.WriteFile(p.path, []byte("bad"), 0o644)
	if v := p.changed(); v != nil {
		t.Errorf("unreadable progress sent: %+v", v)
	}
	os.WriteFile(p.path, []byte("50% half"), 0o644)
	if v := p.changed(); v == nil || v.Fraction != 0.5 || v.Message != "half" {
		t.Errorf("changed: %+v", v)
	}
}
