package trace

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// dir holds the public traces, copied byte for byte (see its README).
var dir = filepath.Join("..", "..", "traces")

// lost counts the nodes a trace takes from a pool that always runs as many
// nodes as the capacity allows: each preemption an event log names, and
// each drop of the capacity below the nodes running.
func lost(t *Trace) (n int) {
	prev := t.Initial
	for _, s := range t.Steps {
		n += s.Removed + max(0, prev-s.Removed-s.Capacity)
		prev = s.Capacity
	}
	return n
}

// TestPublicTraces reads every file and checks what the traces' README
// (computed from the files by other means) says of each.
func TestPublicTraces(t *testing.T) {
	for _, tt := range []struct {
		file     string
		format   string
		duration time.Duration
		lost     int
		max      int
	}{
		{"cant-be-late/preemption_1-node_aws-04-22-2023_us-west-2b_v100_1.json", FormatJSON, 19961 * 32 * time.Second, 44, 1},
		{"cant-be-late/preemption_1-node_aws-04-22-2023_us-east-1c_v100_1.json", FormatJSON, 19961 * 32 * time.Second, 41, 1},
		{"cant-be-late/preemption_1-node_aws-04-19-2023_us-east-1c_intel_64.json", FormatJSON, 16090 * 34 * time.Second, 128, 1},
		{"cant-be-late/preemption_1-node_gcp-04-30-2023_us-east1-b_c3-88.json", FormatJSON, 5476 * 30 * time.Second, 3, 1},
		{"cant-be-late/availability_1-node_aws-02-15-2023_us-east-1a_v100_1.json", FormatJSON, 20158 * 195 * time.Second, 253, 1},
		{"cant-be-late/availability_1-node_aws-02-15-2023_us-west-2b_v100_1.json", FormatJSON, 20158 * 195 * time.Second, 94, 1},
		{"cant-be-late/availability_1-node_aws-10-26-2022_us-west-2a_v100_8.json", FormatJSON, 3895 * 600 * time.Second, 269, 1},
		{"cant-be-late/preemption_4-node_aws-08-03-2023_us-east-2a_v100_1.json", FormatJSON, 5131 * 300 * time.Second, 75, 4},
		{"cant-be-late/availability_16-node_aws-08-27-2023_us-east-2b_v100_1.json", FormatJSON, 3247 * 300 * time.Second, 910, 16},
		{"bamboo/p3-trace.csv", FormatEvents, 0, 167, 32},
		{"bamboo/g4dn-trace.csv", FormatEvents, 0, 74, 24},
		{"bamboo/v100x1-east1c.txt", FormatCountLog, 0, 518, 80},
		{"bamboo/a100x1-east1b.txt", FormatCountLog, 0, 154, 64},
	} {
		t.Run(filepath.Base(tt.file), func(t *testing.T) {
			tr, err := Load(filepath.Join(dir, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if tr.Format != tt.format {
				t.Errorf("format %s, want %s", tr.Format, tt.format)
			}
			if tt.duration != 0 && tr.Duration != tt.duration {
				t.Errorf("duration %s, want %s", tr.Duration, tt.duration)
			}
			if n := lost(tr); n != tt.lost {
				t.Errorf("nodes lost %d, want %d", n, tt.lost)
			}
			peak := tr.Initial
			for _, s := range tr.Steps {
				peak = max(peak, s.Capacity)
			}
			if peak != tt.max {
				t.Errorf("most capacity %d, want %d", peak, tt.max)
			}
		})
	}
}

// TestEventLogSpans checks the event logs' spans and the count logs'
// samples against the README's table.
func TestEventLogSpans(t *testing.T) {
	p3, err := Load(filepath.Join(dir, "bamboo/p3-trace.csv"))
	if err != nil {
		t.Fatal(err)
	}
	adds := 0
	for _, s := range p3.Steps {
		if s.Removed == 0 {
			adds++
		}
	}
	if adds != 177 || p3.CapacityAt(p3.Duration) != 10 {
		t.Errorf("p3: %d adds, final size %d; want 177 and 10", adds, p3.CapacityAt(p3.Duration))
	}
	if h := p3.Duration.Hours(); h < 11.36 || h > 11.38 {
		t.Errorf("p3 spans %.2f h, want 11.37", h)
	}
	v100, err := Load(filepath.Join(dir, "bamboo/v100x1-east1c.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if want := 24*time.Hour + 10*time.Minute + 13*time.Second; v100.Duration != want {
		t.Errorf("v100 count log spans %s, want %s", v100.Duration, want)
	}
	drops := 0
	prev := v100.Initial
	for _, s := range v100.Steps {
		if s.Capacity < prev {
			drops++
		}
		prev = s.Capacity
	}
	if drops != 55 {
		t.Errorf("v100 count log: %d decrease steps, want 55", drops)
	}
}

func TestCapacityAt(t *testing.T) {
	tr, err := Parse([]byte(`{"metadata": {"gap_seconds": 10}, "data": [1, 1, 0, 0, 1]}`))
	if err != nil {
		t.Fatal(err)
	}
	for at, want := range map[time.Duration]int{0: 1, 19 * time.Second: 1, 20 * time.Second: 0, 39 * time.Second: 0, 40 * time.Second: 1, time.Hour: 1} {
		if got := tr.CapacityAt(at); got != want {
			t.Errorf("CapacityAt(%s) = %d, want %d", at, got, want)
		}
	}
	if got := tr.Between(0, 40*time.Second); len(got) != 2 || got[0].At != 20*time.Second || got[1].Capacity != 1 {
		t.Errorf("Between(0, 40s) = %+v", got)
	}
	if got := tr.Between(20*time.Second, 39*time.Second); len(got) != 0 {
		t.Errorf("Between(20s, 39s) = %+v, want none (the step at 20s is not after 20s)", got)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{``, "empty trace"},
		{`{"metadata": {"gap_seconds": 0}, "data": [1]}`, "gap_seconds must be positive"},
		{`{"metadata": {"gap_seconds": 5}, "data": []}`, "data is empty"},
		{`{"metadata": {"gap_seconds": 5}, "data": [1, -1]}`, "data[1] is -1"},
		{`{"metadata": {"gap": 5}, "data": [1]}`, `unknown field "gap"`},
		{"0,add,n1\n10,remove,n1\n5,add,n2\n", "line 3: time 5 ms is before"},
		{"0,remove,n1\n", "remove with no node"},
		{"0,add,n1\nx,add,n2\n", `line 2: time "x"`},
		{"2021-12-10, 13:07:45, 80\n2021-12-10, 13:00:00, 70\n", "is before the one above it"},
		{"hello\n", "not a trace this market reads"},
	} {
		_, err := Parse([]byte(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tt.in, err, tt.want)
		}
	}
}

func TestPrices(t *testing.T) {
	tr, err := Load(filepath.Join(dir, "cant-be-late/preemption_1-node_aws-04-22-2023_us-west-2b_v100_1.json"))
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := tr.PriceAt(0); !ok || p != 0.918 {
		t.Errorf("price at the start: %g %v, want 0.918", p, ok)
	}
	noPrices, err := Parse([]byte(`{"metadata": {"gap_seconds": 10}, "data": [1]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := noPrices.PriceAt(time.Hour); ok {
		t.Error("a trace without prices has a price")
	}
	if _, err := Parse([]byte(`{"metadata": {"gap_seconds": 10}, "data": [1, 1], "prices": [0.5]}`)); err == nil || !strings.Contains(err.Error(), "1 prices for 2 data ticks") {
		t.Errorf("prices of the wrong length: %v", err)
	}
}

// TestEncodeJSON: what EncodeJSON writes, Parse reads back as the same
// capacities; a zero gap or no data is refused.
func TestEncodeJSON(t *testing.T) {
	b, err := EncodeJSON(1500*time.Millisecond, []int{2, 2, 0, 1, 2})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Parse(b)
	if err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	want := []Step{{At: 3 * time.Second, Capacity: 0}, {At: 4500 * time.Millisecond, Capacity: 1}, {At: 6 * time.Second, Capacity: 2}}
	if tr.Initial != 2 || tr.Duration != 7500*time.Millisecond || !slices.Equal(tr.Steps, want) {
		t.Errorf("parsed %+v, want initial 2, 7.5s, steps %+v", tr, want)
	}
	if _, err := EncodeJSON(0, []int{1}); err == nil {
		t.Error("a zero gap was written")
	}
	if _, err := EncodeJSON(time.Second, nil); err == nil {
		t.Error("no data was written")
	}
}
