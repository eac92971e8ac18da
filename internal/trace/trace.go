// Package trace reads public spot preemption and availability traces (the
// formats of ../shared/traces, copied under traces/ at the repository
// root) into one form the simulated market replays: a list of capacity
// changes in time order.
//
// Three formats are read, told apart by their content:
//   - Can't Be Late JSON, {"metadata": {"gap_seconds": G}, "data": [...]}:
//     one value per tick of G seconds, the number of spot instances
//     available at that tick (0/1 in the one-node files, 0..N in the
//     N-node ones).
//   - Bamboo event logs, lines "t_ms,add|remove,nodeK": a node joins
//     (capacity for one more) or is preempted (one live node is taken).
//   - Bamboo GCP count logs, lines "YYYY-MM-DD, HH:MM:SS, N": the number
//     of running instances of a group, at irregular times; the V100 file
//     writes every observation three times (t, t+60 s, t+120 s) and those
//     triples are read as one sample.
package trace

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Format names.
const (
	FormatJSON     = "json"      // Can't Be Late availability/preemption JSON
	FormatEvents   = "events"    // Bamboo add/remove event log
	FormatCountLog = "count-log" // Bamboo GCP instance-count log
)

// Step is one change of the market: at At (from the trace's start) the
// capacity becomes Capacity, after Removed live nodes were taken (event
// logs say which instants preempt a node; the other formats only give the
// capacity, and a drop below the live nodes takes the surplus).
type Step struct {
	At       time.Duration
	Capacity int
	Removed  int
}

// Trace is a replayable market.
type Trace struct {
	Format string
	// Initial is the capacity before the first step.
	Initial int
	Steps   []Step // in time order; several may share an instant
	// Duration is the time the trace covers.
	Duration time.Duration
	// Prices are the spot price's changes, where the trace records them
	// (the Can't Be Late preemption files do, per tick).
	Prices []Price
}

// Price is the spot price per hour from At on.
type Price struct {
	At      time.Duration
	PerHour float64
}

// PriceAt is the spot price at offset at, and whether the trace has one.
func (t *Trace) PriceAt(at time.Duration) (float64, bool) {
	i := sort.Search(len(t.Prices), func(i int) bool { return t.Prices[i].At > at })
	if i == 0 {
		return 0, false
	}
	return t.Prices[i-1].PerHour, true
}

// Load reads a trace file.
func Load(path string) (*Trace, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Parse reads a trace in any of the formats.
func Parse(b []byte) (*Trace, error) {
	trimmed := bytes.TrimSpace(b)
	switch {
	case len(trimmed) == 0:
		return nil, errors.New("empty trace")
	case trimmed[0] == '{':
		return parseJSON(trimmed)
	}
	first, _, _ := bytes.Cut(trimmed, []byte("\n"))
	if f := strings.Split(strings.TrimSpace(string(first)), ","); len(f) == 3 && (strings.TrimSpace(f[1]) == "add" || strings.TrimSpace(f[1]) == "remove") {
		return parseEvents(trimmed)
	}
	if _, err := parseCountLine(string(first)); err == nil {
		return parseCountLog(trimmed)
	}
	return nil, errors.New(`not a trace this market reads: want Can't Be Late JSON ({"metadata": {"gap_seconds": N}, "data": [...]}), ` +
		`an event log ("t_ms,add|remove,node") or a count log ("YYYY-MM-DD, HH:MM:SS, N")`)
}

func parseJSON(b []byte) (*Trace, error) {
	var doc struct {
		Metadata struct {
			GapSeconds float64 `json:"gap_seconds"`
		} `json:"metadata"`
		Data   []int     `json:"data"`
		Prices []float64 `json:"prices"` // the spot price per hour at each tick, in some files
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("JSON trace: %w", err)
	}
	if !(doc.Metadata.GapSeconds > 0) {
		return nil, fmt.Errorf("JSON trace: metadata.gap_seconds must be positive, got %g", doc.Metadata.GapSeconds)
	}
	if len(doc.Data) == 0 {
		return nil, errors.New("JSON trace: data is empty")
	}
	if len(doc.Prices) != 0 && len(doc.Prices) != len(doc.Data) {
		return nil, fmt.Errorf("JSON trace: %d prices for %d data ticks; want one price a tick, or none", len(doc.Prices), len(doc.Data))
	}
	gap := time.Duration(doc.Metadata.GapSeconds * float64(time.Second))
	t := &Trace{Format: FormatJSON, Initial: doc.Data[0], Duration: gap * time.Duration(len(doc.Data))}
	for i, p := range doc.Prices {
		if !(p >= 0) {
			return nil, fmt.Errorf("JSON trace: prices[%d] is %g; prices are not negative", i, p)
		}
		if i == 0 || p != doc.Prices[i-1] {
			t.Prices = append(t.Prices, Price{At: gap * time.Duration(i), PerHour: p})
		}
	}
	for i, v := range doc.Data {
		if v < 0 {
			return nil, fmt.Errorf("JSON trace: data[%d] is %d; capacities are not negative", i, v)
		}
		if i > 0 && v != doc.Data[i-1] {
			t.Steps = append(t.Steps, Step{At: gap * time.Duration(i), Capacity: v})
		}
	}
	return t, nil
}

func parseEvents(b []byte) (*Trace, error) {
	t := &Trace{Format: FormatEvents}
	capacity := 0
	var last time.Duration
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text()) // CRLF in p3-trace.csv
		if text == "" {
			continue
		}
		f := strings.Split(text, ",")
		if len(f) != 3 {
			return nil, fmt.Errorf("event log line %d: want t_ms,add|remove,node, got %q", line, text)
		}
		ms, err := strconv.ParseInt(strings.TrimSpace(f[0]), 10, 64)
		if err != nil || ms < 0 {
			return nil, fmt.Errorf("event log line %d: time %q is not a count of milliseconds", line, f[0])
		}
		at := time.Duration(ms) * time.Millisecond
		if at < last {
			return nil, fmt.Errorf("event log line %d: time %d ms is before the line above it", line, ms)
		}
		last = at
		switch strings.TrimSpace(f[1]) {
		case "add":
			capacity++
			t.Steps = append(t.Steps, Step{At: at, Capacity: capacity})
		case "remove":
			if capacity == 0 {
				return nil, fmt.Errorf("event log line %d: remove with no node in the trace", line)
			}
			capacity--
			t.Steps = append(t.Steps, Step{At: at, Capacity: capacity, Removed: 1})
		default:
			return nil, fmt.Errorf("event log line %d: event %q is not add or remove", line, f[1])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	t.Duration = last
	return t, nil
}

type countSample struct {
	at    time.Time
	count int
}

func parseCountLine(s string) (countSample, error) {
	f := strings.Split(strings.TrimSpace(s), ",")
	if len(f) != 3 {
		return countSample{}, fmt.Errorf("want YYYY-MM-DD, HH:MM:SS, N, got %q", s)
	}
	at, err := time.Parse("2006-01-02 15:04:05", strings.TrimSpace(f[0])+" "+strings.TrimSpace(f[1]))
	if err != nil {
		return countSample{}, fmt.Errorf("time of %q: %w", s, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(f[2]))
	if err != nil || n < 0 {
		return countSample{}, fmt.Errorf("count of %q is not a whole number", s)
	}
	return countSample{at, n}, nil
}

func parseCountLog(b []byte) (*Trace, error) {
	var samples []countSample
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		s, err := parseCountLine(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("count log line %d: %w", line, err)
		}
		samples = append(samples, s)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	samples = collapseTriples(samples)
	t := &Trace{Format: FormatCountLog, Initial: samples[0].count}
	for i, s := range samples {
		if i > 0 && s.at.Before(samples[i-1].at) {
			return nil, fmt.Errorf("count log: sample %d (%s) is before the one above it", i+1, s.at.Format(time.DateTime))
		}
		if i > 0 && s.count != samples[i-1].count {
			t.Steps = append(t.Steps, Step{At: s.at.Sub(samples[0].at), Capacity: s.count})
		}
	}
	t.Duration = samples[len(samples)-1].at.Sub(samples[0].at)
	return t, nil
}

// collapseTriples reads a log that writes every observation three times,
// at t, t+60 s and t+120 s with one count, as one sample per observation.
// A log in which any group of three breaks that pattern is read as it is.
func collapseTriples(s []countSample) []countSample {
	if len(s) < 3 {
		return s
	}
	var out []countSample
	for i := 0; i < len(s); i += 3 {
		out = append(out, s[i])
		for j := 1; j < 3 && i+j < len(s); j++ {
			if s[i+j].count != s[i].count || s[i+j].at.Sub(s[i].at) != time.Duration(j)*time.Minute {
				return s
			}
		}
	}
	return out
}

// CapacityAt is the capacity at offset at: the last step at or before it,
// or the initial capacity. Past the end the trace holds its last value.
func (t *Trace) CapacityAt(at time.Duration) int {
	i := t.after(at)
	if i == 0 {
		return t.Initial
	}
	return t.Steps[i-1].Capacity
}

// after is the index of the first step later than at.
func (t *Trace) after(at time.Duration) int {
	return sort.Search(len(t.Steps), func(i int) bool { return t.Steps[i].At > at })
}

// Between returns the steps after from and at or before to, in order.
func (t *Trace) Between(from, to time.Duration) []Step {
	if to <= from {
		return nil
	}
	return t.Steps[t.after(from):t.after(to)]
}

// EncodeJSON writes capacities, one a tick of gap, as a Can't Be Late JSON
// trace (what Parse reads back): how a pool's recorded history is handed
// to spotml plan, or saved for a market to replay.
func EncodeJSON(gap time.Duration, data []int) ([]byte, error) {
	if gap <= 0 {
		return nil, fmt.Errorf("gap: %s must be positive", gap)
	}
	if len(data) == 0 {
		return nil, errors.New("data: no tick to write")
	}
	var doc struct {
		Metadata struct {
			GapSeconds float64 `json:"gap_seconds"`
		} `json:"metadata"`
		Data []int `json:"data"`
	}
	doc.Metadata.GapSeconds, doc.Data = gap.Seconds(), data
	return json.Marshal(doc)
}
