package storetest

import (
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/store"
)

// services applies services by name, with nothing in their spec.
func (h *Harness) services(names ...string) {
	h.T.Helper()
	var docs []store.ServiceDoc
	for _, n := range names {
		docs = append(docs, store.ServiceDoc{Name: n, Spec: []byte(`{"n":"` + n + `"}`), RolloutKey: "k", Initial: 1})
	}
	if _, err := h.St.Apply(h.Ctx, nil, nil, docs...); err != nil {
		h.T.Fatal(err)
	}
}

func (h *Harness) samples(service string, since time.Time) []store.ServiceSample {
	h.T.Helper()
	got, err := h.St.ServiceSamples(h.Ctx, service, since)
	if err != nil {
		h.T.Fatal(err)
	}
	return got
}

// testGatewayStats checks how the gateways' reports combine: counts and
// QPS add up, latencies take the worst gateway, a report replaces the
// gateway's last one, and a stale one stops counting.
func testGatewayStats(t *testing.T, h *Harness) {
	h.services("a", "b")
	const maxAge = 5 * time.Second
	steps := []struct {
		name    string
		advance time.Duration
		gateway string
		stats   map[string]store.GatewayStat
		want    map[string]store.GatewayStat
	}{
		{
			name:    "one gateway",
			gateway: "g1",
			stats: map[string]store.GatewayStat{
				"a": {QPS: 2, P50: 0.010, P99: 0.100, Requests: 100, Errors: 1, InFlight: 1.5, InFlightPanic: 2.25, InFlightMax: 4},
				"b": {QPS: 1, P50: 0.005, P99: 0.007, Requests: 60},
			},
			want: map[string]store.GatewayStat{
				"a": {QPS: 2, P50: 0.010, P99: 0.100, Requests: 100, Errors: 1, InFlight: 1.5, InFlightPanic: 2.25, InFlightMax: 4, Gateways: 1},
				"b": {QPS: 1, P50: 0.005, P99: 0.007, Requests: 60, Gateways: 1},
			},
		},
		{
			name:    "a second gateway adds up, the slower latency wins",
			advance: time.Second,
			gateway: "g2",
			stats:   map[string]store.GatewayStat{"a": {QPS: 3, P50: 0.020, P99: 0.050, Requests: 200, Errors: 2, InFlight: 0.5, InFlightPanic: 0.25, InFlightMax: 2}},
			want: map[string]store.GatewayStat{
				"a": {QPS: 5, P50: 0.020, P99: 0.100, Requests: 300, Errors: 3, InFlight: 2, InFlightPanic: 2.5, InFlightMax: 6, Gateways: 2},
				"b": {QPS: 1, P50: 0.005, P99: 0.007, Requests: 60, Gateways: 1},
			},
		},
		{
			name:    "a stale gateway stops counting",
			advance: maxAge - time.Second/2, // g1 is 5.5s old, g2 4.5s
			want:    map[string]store.GatewayStat{"a": {QPS: 3, P50: 0.020, P99: 0.050, Requests: 200, Errors: 2, InFlight: 0.5, InFlightPanic: 0.25, InFlightMax: 2, Gateways: 1}},
		},
		{
			name:    "a report replaces the gateway's last one",
			gateway: "g2",
			stats:   map[string]store.GatewayStat{"b": {QPS: 4, P50: 0.001, P99: 0.002, Requests: 240}},
			want:    map[string]store.GatewayStat{"b": {QPS: 4, P50: 0.001, P99: 0.002, Requests: 240, Gateways: 1}},
		},
	}
	for _, st := range steps {
		h.Clock.Advance(st.advance)
		if st.gateway != "" {
			if err := h.St.PutGatewayStats(h.Ctx, st.gateway, st.stats); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
		}
		got, err := h.St.ServiceTraffic(h.Ctx, maxAge)
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if !maps.Equal(got, st.want) {
			t.Errorf("%s: ServiceTraffic = %+v, want %+v", st.name, got, st.want)
		}
		svcs, err := h.St.ListServices(h.Ctx, maxAge)
		if err != nil {
			t.Fatal(err)
		}
		for _, svc := range svcs {
			if svc.QPS != st.want[svc.Name].QPS || svc.Traffic != st.want[svc.Name] {
				t.Errorf("%s: ListServices: %s has QPS %v, traffic %+v, want %+v", st.name, svc.Name, svc.QPS, svc.Traffic, st.want[svc.Name])
			}
		}
	}
}

// testServiceSamples checks that samples come back as recorded, oldest
// first from a time on, only for services that exist, and go with their
// service.
func testServiceSamples(t *testing.T, h *Harness) {
	h.services("m")
	if _, err := h.St.ServiceSamples(h.Ctx, "nope", time.Time{}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("samples of an unknown service: err = %v, want ErrNotFound", err)
	}
	if got := h.samples("m", time.Time{}); got == nil || len(got) != 0 {
		t.Errorf("samples before any: %#v, want an empty slice", got)
	}
	first := store.ServiceSample{QPS: 2.5, P50: 0.012, P99: 0.25, Requests: 150, Errors: 3, Ready: 3, Desired: 4, Spot: 2, OnDemand: 1,
		InFlight: 1.75, InFlightMax: 5}
	second := store.ServiceSample{Time: t0.Add(10 * time.Second), QPS: 1, Ready: 1, Desired: 1, OnDemand: 1}
	// The later sample is recorded first: order comes from the times.
	if err := h.St.AddServiceSamples(h.Ctx, map[string]store.ServiceSample{"m": second, "ghost": second}); err != nil {
		t.Fatal(err)
	}
	if err := h.St.AddServiceSamples(h.Ctx, map[string]store.ServiceSample{"m": first}); err != nil {
		t.Fatal(err)
	}
	first.Time = t0 // a zero time is the store's now
	tests := []struct {
		name  string
		since time.Time
		want  []store.ServiceSample
	}{
		{"all", time.Time{}, []store.ServiceSample{first, second}},
		{"since the first", t0, []store.ServiceSample{first, second}},
		{"since between", t0.Add(time.Second), []store.ServiceSample{second}},
		{"since after the last", t0.Add(11 * time.Second), []store.ServiceSample{}},
	}
	for _, tt := range tests {
		if got := h.samples("m", tt.since); !slices.Equal(got, tt.want) {
			t.Errorf("%s: ServiceSamples =\n%+v\nwant\n%+v", tt.name, got, tt.want)
		}
	}

	// A sample at a time already recorded replaces it.
	again := second
	again.QPS = 7
	if err := h.St.AddServiceSamples(h.Ctx, map[string]store.ServiceSample{"m": again}); err != nil {
		t.Fatal(err)
	}
	h.Reopen()
	if got := h.samples("m", time.Time{}); !slices.Equal(got, []store.ServiceSample{first, again}) {
		t.Errorf("after replacing a sample and reopening: %+v", got)
	}

	// A service deleted and applied again starts with no history.
	if err := h.St.DeleteService(h.Ctx, "m"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.St.ServiceSamples(h.Ctx, "m", time.Time{}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("samples of a deleted service: err = %v, want ErrNotFound", err)
	}
	h.services("m")
	if got := h.samples("m", time.Time{}); len(got) != 0 {
		t.Errorf("samples of a service applied again: %+v, want none", got)
	}
}

// testServiceSamplesRetention checks that recording samples drops those
// older than store.SampleRetention.
func testServiceSamplesRetention(t *testing.T, h *Harness) {
	h.services("m")
	for i := range 3 {
		at := t0.Add(time.Duration(i) * time.Hour)
		if err := h.St.AddServiceSamples(h.Ctx, map[string]store.ServiceSample{"m": {Time: at, Ready: i}}); err != nil {
			t.Fatal(err)
		}
	}
	h.Clock.Advance(store.SampleRetention + time.Hour) // the first is older than the retention, the second just as old
	if err := h.St.AddServiceSamples(h.Ctx, map[string]store.ServiceSample{"m": {Ready: 3}}); err != nil {
		t.Fatal(err)
	}
	var ready []int
	for _, s := range h.samples("m", time.Time{}) {
		ready = append(ready, s.Ready)
	}
	if want := []int{1, 2, 3}; !slices.Equal(ready, want) {
		t.Errorf("samples kept (by Ready): %v, want %v", ready, want)
	}
}
