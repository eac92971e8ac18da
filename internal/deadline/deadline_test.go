package deadline

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/trace"
)

func job(work, dl time.Duration) Job {
	return Job{Work: work, Deadline: dl, Changeover: 12 * time.Minute, SpotPrice: 1, OnDemandPrice: 3}
}

func market(t *testing.T, js string) Market {
	t.Helper()
	tr, err := trace.Parse([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return Market{Trace: tr}
}

// flapping is spot for 10 minutes, then none for 10, for two days.
func flapping(t *testing.T) Market {
	var b strings.Builder
	b.WriteString(`{"metadata": {"gap_seconds": 600}, "data": [`)
	for i := range 288 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString([]string{"1", "0"}[i%2])
	}
	b.WriteString("]}")
	return market(t, b.String())
}

func TestPolicy(t *testing.T) {
	h := time.Hour
	for _, tt := range []struct {
		name   string
		m      func(*testing.T) Market
		check  func(*testing.T, Result)
		policy Options
	}{{
		name: "no spot at all: on time, on on-demand, at its cost",
		m:    func(t *testing.T) Market { return market(t, `{"metadata": {"gap_seconds": 3600}, "data": [0]}`) },
		check: func(t *testing.T, r Result) {
			if r.Missed || r.SpotHours != 0 || r.Changeovers != 1 || r.Fraction() > 1.0001 {
				t.Errorf("%+v: want on time, no spot, one start, on-demand's cost", r)
			}
		},
	}, {
		name: "spot never fails: all spot, one start",
		m:    func(t *testing.T) Market { return market(t, `{"metadata": {"gap_seconds": 3600}, "data": [1]}`) },
		check: func(t *testing.T, r Result) {
			if r.Missed || r.OnDemandHours != 0 || r.Changeovers != 1 || r.Fraction() > 0.34 {
				t.Errorf("%+v: want on time, all spot, one start, a third of on-demand's cost", r)
			}
		},
	}, {
		name: "flapping spot: no changeover storm, never above on-demand",
		m:    flapping,
		check: func(t *testing.T, r Result) {
			if r.Missed || r.Changeovers > 6 || r.Fraction() > 1.01 {
				t.Errorf("%+v: want on time, a few starts, at most 1 %% over on-demand", r)
			}
		},
	}, {
		name:   "flapping spot, plain Uniform Progress: the storm the guards prevent",
		m:      flapping,
		policy: Options{NoThreshold: true, NoBudget: true},
		check: func(t *testing.T, r Result) {
			if r.Missed || r.Changeovers < 20 || r.Fraction() <= 1.01 {
				t.Errorf("%+v: plain UP should thrash here and cost more than on-demand", r)
			}
		},
	}, {
		name: "spot gone halfway: on time on on-demand",
		m: func(t *testing.T) Market {
			return market(t, `{"metadata": {"gap_seconds": 3600}, "data": [1,1,1,1,1,1,1,1,1,1,1,1,0]}`)
		},
		check: func(t *testing.T, r Result) {
			if r.Missed || r.SpotHours < 11 || r.OnDemandHours < 11 {
				t.Errorf("%+v: want on time, about half on each", r)
			}
		},
	}} {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, Simulate(job(24*h, 30*h), tt.m(t), 0, 0, tt.policy))
		})
	}
}

func TestDeadlineGuard(t *testing.T) {
	j := job(10*time.Hour, 12*time.Hour)
	// Ten minutes in, the job is behind the line by less than a tenth of
	// its slack: it waits for spot…
	s := State{Elapsed: 10 * time.Minute, Done: 0, Mode: Wait}
	if got := Decide(j, s, Options{}); got != Wait {
		t.Errorf("with slack: %s, want wait", got)
	}
	// …half an hour in it is behind by more, and runs…
	s.Elapsed = 30 * time.Minute
	if got := Decide(j, s, Options{}); got != OnDemand {
		t.Errorf("behind: %s, want ondemand", got)
	}
	// …and once the work, a start and the margin fill the time left it
	// runs on on-demand even with spot there (ahead of the line or not).
	s = State{Elapsed: 12*time.Hour - 4*time.Hour - 24*time.Minute, Done: 6 * time.Hour, Mode: Wait, SpotAvailable: true}
	if got := Decide(j, s, Options{}); got != OnDemand {
		t.Errorf("without slack: %s, want ondemand", got)
	}
	s.Elapsed -= time.Minute
	if got := Decide(j, s, Options{}); got != Spot {
		t.Errorf("a minute of slack more: %s, want spot", got)
	}
}

func TestValidate(t *testing.T) {
	for _, j := range []Job{
		{Work: 0, Deadline: time.Hour, SpotPrice: 1, OnDemandPrice: 2},
		{Work: time.Hour, Deadline: time.Hour, Changeover: time.Minute, SpotPrice: 1, OnDemandPrice: 2},
		{Work: time.Hour, Deadline: 2 * time.Hour, SpotPrice: 2, OnDemandPrice: 1},
	} {
		if j.Validate() == nil {
			t.Errorf("%+v: valid, want an error", j)
		}
	}
}

func TestSimulateSweep(t *testing.T) {
	// Spot for the first 10h of a 40h trace, none after.
	tr := &trace.Trace{Initial: 1, Steps: []trace.Step{{At: 10 * time.Hour, Capacity: 0}}, Duration: 40 * time.Hour}
	j := Job{Work: 6 * time.Hour, Deadline: 10 * time.Hour, Changeover: 6 * time.Minute, SpotPrice: 1, OnDemandPrice: 3}
	offs := Offsets(tr, j.Deadline, 4)
	if want := []time.Duration{0, 10 * time.Hour, 20 * time.Hour, 30 * time.Hour}; !slices.Equal(offs, want) {
		t.Fatalf("offsets %v, want %v", offs, want)
	}
	s := SimulateSweep(j, Market{Trace: tr}, offs, time.Minute, Options{})
	if s.Met != 1 {
		t.Errorf("met %.2f of the runs, want all", s.Met)
	}
	// From 0: all spot. From the others: no spot, all on-demand.
	if f := s.Runs[0].Fraction(); f > 0.4 {
		t.Errorf("all-spot run costs %.2f of on-demand", f)
	}
	if s.WorstFraction > 1.01 || s.WorstFraction < 0.99 {
		t.Errorf("worst %.3f, want on-demand's cost (1.0) on the runs without spot", s.WorstFraction)
	}
}
