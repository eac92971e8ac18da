package control_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
)

// pricedProvider is a fakeProvider that tells a Spot price, or fails to.
type pricedProvider struct {
	fakeProvider
	price float64
	err   error
	asked []string
}

func (p *pricedProvider) SpotPrice(_ context.Context, pool spec.Pool, zone string) (float64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.asked = append(p.asked, pool.Spec.InstanceType+"@"+zone)
	return p.price, p.err
}

func (p *pricedProvider) set(price float64, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.price, p.err = price, err
}

// TestCloudPrices: a pool with prices: cloud bills a new node at the
// provider's Spot price (its billing run opens at it); when the provider
// cannot tell, the table's price, with an event saying why.
func TestCloudPrices(t *testing.T) {
	prov := &pricedProvider{price: 0.1234}
	p := newPlaneOn(t, map[string]control.Provider{spec.ProviderAWS: prov}, control.Options{})
	clk, st := p.clock, p.st
	p.apply(`
apiVersion: spotml/v1
kind: Pool
metadata: {name: gpu}
spec:
  provider: aws
  priority: spot
  instanceType: g4dn.xlarge
  min: 1
  max: 3
  aws: {region: us-east-1, subnets: [subnet-0000000a], image: ami-0123456789abcdef0, prices: cloud}
`)
	p.reconcile()
	nodes := p.nodes()
	if len(nodes) != 1 || nodes[0].PricePerHour != 0.1234 || len(prov.asked) != 1 || prov.asked[0] != "g4dn.xlarge@" {
		t.Fatalf("nodes %+v, asked %q", nodes, prov.asked)
	}
	table, _ := control.Prices(spec.Pool{Spec: spec.PoolSpec{Priority: spec.PrioritySpot, InstanceType: "g4dn.xlarge"}})
	runs, err := st.Runs(p.ctx)
	if err != nil || len(runs) != 1 || runs[0].PricePerHour != 0.1234 {
		t.Errorf("runs %+v, %v: want one at the cloud price", runs, err)
	}

	prov.err = errors.New("RequestLimitExceeded")
	p.apply(`
apiVersion: spotml/v1
kind: Pool
metadata: {name: gpu}
spec:
  provider: aws
  priority: spot
  instanceType: g4dn.xlarge
  min: 2
  max: 3
  aws: {region: us-east-1, subnets: [subnet-0000000a], image: ami-0123456789abcdef0, prices: cloud}
`)
	p.reconcile()
	var second store.Node
	for _, n := range p.nodes() {
		if n.Name != nodes[0].Name {
			second = n
		}
	}
	if second.Name == "" || second.PricePerHour != table || table == 0 {
		t.Errorf("node after a failed price lookup: %+v, want the table's $%g", second, table)
	}
	if es := p.events(store.EventFilter{Kind: "PriceFallback"}); len(es) != 1 || es[0].Object != "pool/gpu" {
		t.Errorf("PriceFallback events %+v", es)
	}

	// The first node got another type (a fleet's choice): billed at the
	// cloud's price of that type from then on, in a run of its own.
	prov.err, prov.price = nil, 0.4321
	clk.Advance(time.Hour)
	if err := p.p.Placed(p.ctx, nodes[0].Name, control.Placement{InstanceType: "g5.xlarge", Zone: "us-east-1b"}); err != nil {
		t.Fatal(err)
	}
	if got := prov.asked[len(prov.asked)-1]; got != "g5.xlarge@us-east-1b" {
		t.Errorf("asked %q for the placed type", got)
	}
	runs, _ = st.Runs(p.ctx)
	var mine []float64
	for _, r := range runs {
		if r.Node == nodes[0].Name {
			mine = append(mine, r.PricePerHour)
		}
	}
	if len(mine) != 2 || mine[0] != 0.1234 || mine[1] != 0.4321 {
		t.Errorf("runs of %s priced %v, want [0.1234 0.4321]", nodes[0].Name, mine)
	}
}

const cloudPool = `
apiVersion: spotml/v1
kind: Pool
metadata: {name: gpu}
spec:
  provider: aws
  priority: spot
  instanceType: g4dn.xlarge
  min: 1
  max: 1
  aws: {region: us-east-1, subnets: [subnet-0000000a], image: ami-0123456789abcdef0, prices: cloud}
---
apiVersion: spotml/v1
kind: Pool
metadata: {name: table}
spec:
  provider: aws
  priority: spot
  instanceType: g4dn.xlarge
  min: 1
  max: 1
  aws: {region: us-east-1, subnets: [subnet-0000000a], image: ami-0123456789abcdef0}
`

// runsOf are a node's billing runs.
func runsOf(t *testing.T, st interface {
	Runs(context.Context) ([]store.Run, error)
}, node string) []store.Run {
	t.Helper()
	runs, err := st.Runs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []store.Run
	for _, r := range runs {
		if r.Node == node {
			out = append(out, r)
		}
	}
	return out
}

// TestRepriceFollowsTheCloud: a running node of a pool on cloud prices
// is billed at the cloud's price as it moves: a changed price closes the
// node's billing run and opens one at the new price (with a PriceChanged
// event), so the cost report integrates the price over the node's life;
// an unchanged price changes nothing, and a price that cannot be read
// leaves the node at the price it has. A pool on the price table is never
// priced again.
func TestRepriceFollowsTheCloud(t *testing.T) {
	prov := &pricedProvider{price: 0.1}
	p := newPlaneOn(t, map[string]control.Provider{spec.ProviderAWS: prov}, control.Options{})
	clk, st := p.clock, p.st
	p.apply(cloudPool)
	p.reconcile()
	var node, tableNode store.Node
	for _, n := range p.nodes() {
		if n.Pool == "gpu" {
			node = n
		} else {
			tableNode = n
		}
	}
	if node.PricePerHour != 0.1 || tableNode.Name == "" {
		t.Fatalf("nodes %+v", p.nodes())
	}
	if err := st.SetNodePlacement(p.ctx, node.Name, store.Placement{Zone: "us-east-1b"}); err != nil {
		t.Fatal(err)
	}
	reprice := func() {
		t.Helper()
		if err := p.p.Reprice(p.ctx); err != nil {
			t.Fatal(err)
		}
	}

	// An hour later the Spot price is 0.3.
	clk.Advance(time.Hour)
	prov.set(0.3, nil)
	asked := len(prov.asked)
	reprice()
	if got := prov.asked[asked:]; len(got) != 1 || got[0] != "g4dn.xlarge@us-east-1b" {
		t.Errorf("asked %q, want the cloud node's type in its zone only", got)
	}
	runs := runsOf(t, st, node.Name)
	if len(runs) != 2 || runs[0].PricePerHour != 0.1 || !runs[0].End.Equal(now.Add(time.Hour)) || runs[1].PricePerHour != 0.3 || !runs[1].End.IsZero() {
		t.Fatalf("runs after the price change: %+v", runs)
	}
	if n, _ := st.GetNode(p.ctx, node.Name); n.PricePerHour != 0.3 {
		t.Errorf("node priced %g, want 0.3", n.PricePerHour)
	}
	if es := p.events(store.EventFilter{Kind: "PriceChanged"}); len(es) != 1 || es[0].Object != "node/"+node.Name || !strings.Contains(es[0].Message, "$0.3000/h, was $0.1000/h") {
		t.Errorf("PriceChanged events %+v", es)
	}
	// The same price again: no new run, no event.
	reprice()
	if runs := runsOf(t, st, node.Name); len(runs) != 2 {
		t.Errorf("%d runs after an unchanged price, want 2", len(runs))
	}
	// The cloud cannot tell: the node keeps 0.3, nothing fails.
	clk.Advance(time.Hour)
	prov.set(0, errors.New("RequestLimitExceeded"))
	reprice()
	if runs := runsOf(t, st, node.Name); len(runs) != 2 {
		t.Errorf("%d runs after an unreadable price, want 2", len(runs))
	}
	if len(p.events(store.EventFilter{Kind: "PriceChanged"})) != 1 {
		t.Error("an unreadable price changed the node's price")
	}
	if runs := runsOf(t, st, tableNode.Name); len(runs) != 1 {
		t.Errorf("the table pool's node has %d runs, want 1", len(runs))
	}
	// What the cost report bills: an hour at 0.1, an hour at 0.3.
	var usages []cost.Usage
	for _, r := range runsOf(t, st, node.Name) {
		usages = append(usages, cost.Usage{Node: r.Node, Pool: r.Pool, Priority: r.Priority, Start: r.Start, End: r.End, PricePerHour: r.PricePerHour})
	}
	if s := cost.Summarize(usages, clk.Now()); math.Abs(s.Spent-0.4) > 1e-9 {
		t.Errorf("spent $%g over two hours, want $0.40", s.Spent)
	}
}

// TestRepricerRuns: the leader prices running nodes again every
// RepriceEvery on its own, without a reconcile pass asking.
func TestRepricerRuns(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "spotml.db"), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	prov := &pricedProvider{price: 0.1}
	cp := control.New(st, map[string]control.Provider{spec.ProviderAWS: prov}, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Now,
		control.Options{Interval: time.Hour, RepriceEvery: 20 * time.Millisecond, Retention: -1})
	p := &plane{t: t, ctx: t.Context(), st: st, p: cp}
	p.apply(cloudPool)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); cp.Run(ctx) }()
	defer func() { cancel(); <-done }()
	var node string
	for deadline := time.Now().Add(30 * time.Second); node == ""; time.Sleep(10 * time.Millisecond) {
		for _, n := range p.nodes() {
			if n.Pool == "gpu" {
				node = n.Name
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no node launched")
		}
	}
	prov.set(0.2, nil)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if runs := runsOf(t, st, node); len(runs) == 2 && runs[1].PricePerHour == 0.2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("runs %+v: never repriced", runsOf(t, st, node))
		}
	}
}
