// Package cost knows what nodes cost, and sums what a fleet has spent
// against what the same node-time would have cost on demand.
package cost

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

// Instance is one instance type: what a node of it offers and what it
// costs, in USD per hour.
type Instance struct {
	Type            string
	CPU             float64
	Memory          spec.Bytes
	GPU             int
	SpotPerHour     float64
	OnDemandPerHour float64
}

// Lookup returns the default table's entry for an instance type. Names
// match without regard to case, as the clouds' APIs do.
func Lookup(instanceType string) (Instance, bool) {
	for _, in := range instances {
		if strings.EqualFold(in.Type, instanceType) {
			return in, true
		}
	}
	return Instance{}, false
}

// Types returns the instance types of the default table, sorted.
func Types() []string {
	types := make([]string, len(instances))
	for i, in := range instances {
		types[i] = in.Type
	}
	slices.Sort(types)
	return types
}

const gib = spec.Bytes(1 << 30)

// instances is the default table. The prices are representative Linux list
// prices in USD per hour, on demand and a typical spot price, for East US
// (Azure), us-east-1 (AWS) and us-east1 (GCP). They are not live quotes:
// spot prices move daily. A pool overrides them with pricePerHour and
// onDemandPricePerHour. The table is never written to.
var instances = [...]Instance{
	// Azure, East US.
	{Type: "Standard_D2s_v3", CPU: 2, Memory: 8 * gib, SpotPerHour: 0.019, OnDemandPerHour: 0.096},
	{Type: "Standard_D4s_v3", CPU: 4, Memory: 16 * gib, SpotPerHour: 0.038, OnDemandPerHour: 0.192},
	{Type: "Standard_D8s_v3", CPU: 8, Memory: 32 * gib, SpotPerHour: 0.077, OnDemandPerHour: 0.384},
	{Type: "Standard_NC4as_T4_v3", CPU: 4, Memory: 28 * gib, GPU: 1, SpotPerHour: 0.158, OnDemandPerHour: 0.526},
	{Type: "Standard_NC6s_v3", CPU: 6, Memory: 112 * gib, GPU: 1, SpotPerHour: 0.918, OnDemandPerHour: 3.06},

	// AWS, us-east-1.
	{Type: "m5.large", CPU: 2, Memory: 8 * gib, SpotPerHour: 0.037, OnDemandPerHour: 0.096},
	{Type: "m5.xlarge", CPU: 4, Memory: 16 * gib, SpotPerHour: 0.074, OnDemandPerHour: 0.192},
	{Type: "c5.2xlarge", CPU: 8, Memory: 16 * gib, SpotPerHour: 0.18, OnDemandPerHour: 0.34},
	{Type: "g4dn.xlarge", CPU: 4, Memory: 16 * gib, GPU: 1, SpotPerHour: 0.21, OnDemandPerHour: 0.526},
	{Type: "p3.2xlarge", CPU: 8, Memory: 61 * gib, GPU: 1, SpotPerHour: 0.918, OnDemandPerHour: 3.06},

	// GCP, us-east1.
	{Type: "n1-standard-2", CPU: 2, Memory: 15 * gib / 2, SpotPerHour: 0.02, OnDemandPerHour: 0.095},
	{Type: "n1-standard-4", CPU: 4, Memory: 15 * gib, SpotPerHour: 0.04, OnDemandPerHour: 0.19},
	{Type: "n2-standard-8", CPU: 8, Memory: 32 * gib, SpotPerHour: 0.094, OnDemandPerHour: 0.389},
	// GCP attaches T4s to N1 machines; this is an n1-standard-4 with one
	// nvidia-tesla-t4, priced as the machine plus the GPU.
	{Type: "n1-standard-4-t4", CPU: 4, Memory: 15 * gib, GPU: 1, SpotPerHour: 0.15, OnDemandPerHour: 0.54},

	// Local nodes, for tests and the local provider.
	{Type: "local-small", CPU: 2, Memory: 4 * gib, SpotPerHour: 0.01, OnDemandPerHour: 0.04},
}

// Usage is one node's time in a pool at a price.
type Usage struct {
	Node, Pool, Priority string
	Start, End           time.Time // a zero End means the node still runs
	PricePerHour         float64   // what the node costs
	OnDemandPerHour      float64   // what it would cost on demand
}

// Line sums the usage of one pool.
type Line struct {
	Pool        string  `json:"pool"`
	Priority    string  `json:"priority"`
	NodeSeconds float64 `json:"nodeSeconds"`
	Spent       float64 `json:"spent"`    // USD
	OnDemand    float64 `json:"onDemand"` // USD the same node-seconds would cost on demand
}

// Summary is what was spent, against what the same work would have cost
// on demand.
type Summary struct {
	Lines         []Line  `json:"lines"` // one per pool, sorted by pool, then priority
	NodeSeconds   float64 `json:"nodeSeconds"`
	Spent         float64 `json:"spent"`
	OnDemand      float64 `json:"onDemand"`
	Saving        float64 `json:"saving"`        // OnDemand − Spent
	SavingPercent float64 `json:"savingPercent"` // of OnDemand; 0 when OnDemand is 0
}

// Summarize prices each usage by its node-seconds, counting a node that
// still runs up to now, and sums per pool and in total.
func Summarize(usages []Usage, now time.Time) Summary {
	var s Summary
	index := make(map[[2]string]int)
	for _, u := range usages {
		end := u.End
		if end.IsZero() {
			end = now
		}
		// A node whose start is after its end (clock skew, or now before a
		// start) has run for no time, not for negative time.
		secs := max(end.Sub(u.Start).Seconds(), 0)
		spent := secs * u.PricePerHour / 3600
		onDemand := secs * u.OnDemandPerHour / 3600

		k := [2]string{u.Pool, u.Priority}
		i, ok := index[k]
		if !ok {
			i = len(s.Lines)
			index[k] = i
			s.Lines = append(s.Lines, Line{Pool: u.Pool, Priority: u.Priority})
		}
		l := &s.Lines[i]
		l.NodeSeconds += secs
		l.Spent += spent
		l.OnDemand += onDemand
	}
	return total(s.Lines)
}

// total sorts lines by pool, then priority, and sums them. Totals are
// summed from the sorted lines so that they do not depend on the order of
// the usages.
func total(lines []Line) Summary {
	s := Summary{Lines: lines}
	slices.SortFunc(s.Lines, func(a, b Line) int {
		return cmp.Or(cmp.Compare(a.Pool, b.Pool), cmp.Compare(a.Priority, b.Priority))
	})
	for _, l := range s.Lines {
		s.NodeSeconds += l.NodeSeconds
		s.Spent += l.Spent
		s.OnDemand += l.OnDemand
	}
	s.Saving = s.OnDemand - s.Spent
	if s.OnDemand != 0 {
		s.SavingPercent = 100 * s.Saving / s.OnDemand
	}
	return s
}
