package server

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/spotml/spotml/internal/api"
)

// batchView is the watch stream's "batches" view: every BatchInference's
// status as GET /batchinferences gives it, for the console's BatchInference
// pages. Throughput and cost move on every tick while nothing else does
// (the rate's window slides, node time adds up), so the key compares them
// to two and three significant digits, as the cost view does, and leaves
// the ETA (derived from them) out: an idle batch is not resent every
// second, a running one is whenever an item settles.
func (s *Server) batchView(ctx context.Context) (view, error) {
	bs, err := s.cfg.Store.ListBatches(ctx)
	if err != nil {
		return view{}, err
	}
	out, err := s.batchStatus(ctx, bs)
	if err != nil {
		return view{}, err
	}
	data, err := json.Marshal(out)
	if err != nil {
		return view{}, err
	}
	keyed := make([]api.BatchInference, len(out))
	var rounded []byte
	for i, b := range out {
		rounded = fmt.Appendf(rounded, " %.2g %.3g %.3g", b.Throughput, b.Cost, b.OnDemandCost)
		b.Throughput, b.ETA, b.Cost, b.OnDemandCost = 0, 0, 0, 0
		keyed[i] = b
	}
	key, err := json.Marshal(keyed)
	if err != nil {
		return view{}, err
	}
	return view{name: "batches", data: data, key: append(key, rounded...)}, nil
}
