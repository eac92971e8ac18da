package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/spotml/spotml/internal/store"
)

// AddServiceSamples records one sample per service, named by the map's
// keys; a zero Time is the store's now. A sample of a service that does not
// exist (deleted meanwhile) is dropped, and a sample at a time its service
// already has replaces it. Samples older than SampleRetention go in the
// same transaction.
func (s *Store) AddServiceSamples(ctx context.Context, samples map[string]store.ServiceSample) error {
	return s.tx(ctx, func(tx *txn) error {
		now := s.now()
		for svc, v := range samples {
			t := v.Time
			if t.IsZero() {
				t = now
			}
			var exists bool
			if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM services WHERE name = ?)`, svc).Scan(&exists); err != nil {
				return err
			}
			if !exists {
				continue
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO service_samples
				(service, time, qps, p50, p99, requests, errors, ready, desired, spot, ondemand, in_flight, in_flight_max)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
				ON CONFLICT (service, time) DO UPDATE SET qps = excluded.qps, p50 = excluded.p50, p99 = excluded.p99,
					requests = excluded.requests, errors = excluded.errors, ready = excluded.ready, desired = excluded.desired,
					spot = excluded.spot, ondemand = excluded.ondemand, in_flight = excluded.in_flight, in_flight_max = excluded.in_flight_max`,
				svc, t.UnixNano(), v.QPS, v.P50, v.P99, v.Requests, v.Errors, v.Ready, v.Desired, v.Spot, v.OnDemand,
				v.InFlight, v.InFlightMax); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM service_samples WHERE time < ?`, now.Add(-store.SampleRetention).UnixNano())
		return err
	})
}

// ServiceSamples returns a service's samples taken at or after since,
// oldest first; none is an empty slice. An unknown service is ErrNotFound.
func (s *Store) ServiceSamples(ctx context.Context, service string, since time.Time) ([]store.ServiceSample, error) {
	var one int
	if err := s.db.QueryRowContext(ctx, `SELECT 1 FROM services WHERE name = ?`, service).Scan(&one); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("service %q: %w", service, store.ErrNotFound)
		}
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT time, qps, p50, p99, requests, errors, ready, desired, spot, ondemand, in_flight, in_flight_max
		FROM service_samples WHERE service = ? AND time >= ? ORDER BY time`, service, nanos(since))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []store.ServiceSample{}
	for rows.Next() {
		var v store.ServiceSample
		var t int64
		if err := rows.Scan(&t, &v.QPS, &v.P50, &v.P99, &v.Requests, &v.Errors, &v.Ready, &v.Desired, &v.Spot, &v.OnDemand,
			&v.InFlight, &v.InFlightMax); err != nil {
			return nil, err
		}
		v.Time = fromNanos(t)
		out = append(out, v)
	}
	return out, rows.Err()
}
