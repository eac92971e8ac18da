// Package poll runs a provider's pass at once and then on a ticker: the
// Runner loop of the providers that learn what their platform did by
// reading it (azure, aws, gcp), where Kubernetes has informers.
package poll

import (
	"context"
	"log/slog"
	"time"
)

// Every runs pass now and then every interval until ctx ends, and returns
// nil then. A pass that fails is logged ("NAME pass failed") and the next
// runs at its time: a cloud API that fails now may answer at the next
// pass, and the control plane carries on meanwhile.
func Every(ctx context.Context, interval time.Duration, log *slog.Logger, name string, pass func(context.Context) error) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := pass(ctx); err != nil && ctx.Err() == nil {
			log.Error(name+" pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
