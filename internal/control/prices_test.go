package control_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/clock"
	"github.com/spotml/spotml/internal/control"
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
	p.asked = append(p.asked, pool.Spec.InstanceType+"@"+zone)
	return p.price, p.err
}

// TestCloudPrices: a pool with prices: cloud bills a new node at the
// provider's Spot price (its billing run opens at it); when the provider
// cannot tell, the table's price, with an event saying why.
func TestCloudPrices(t *testing.T) {
	clk := clock.NewFake(now)
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "spotml.db"), clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	prov := &pricedProvider{price: 0.1234}
	p := &plane{t: t, ctx: t.Context(), st: st, clock: clk,
		p: control.New(st, map[string]control.Provider{spec.ProviderAWS: prov}, slog.New(slog.NewTextHandler(io.Discard, nil)), clk.Now, control.Options{})}
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
