package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// SampleRetention is how long service samples are kept: AddServiceSamples
// deletes older ones.
const SampleRetention = 24 * time.Hour

// ServiceSample is one point of a service's history, as the web console
// charts it: its traffic as the gateways measured it and its replicas.
type ServiceSample struct {
	Time time.Time `json:"time"`
	QPS  float64   `json:"qps"`
	// P50 and P99 are latencies in seconds, the highest any gateway
	// reported (see ServiceTraffic).
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	// Requests and Errors are counted over the minute before Time, as the
	// gateways report them, so consecutive samples overlap.
	Requests int64 `json:"requests"`
	Errors   int64 `json:"errors"`
	Ready    int   `json:"ready"`    // ready replicas not on a noticed node
	Desired  int   `json:"desired"`  // replicas the autoscaler wanted
	Spot     int   `json:"spot"`     // of Ready, on spot nodes
	OnDemand int   `json:"onDemand"` // of Ready, on on-demand nodes
}

// AddServiceSamples records one sample per service, named by the map's
// keys; a zero Time is the store's now. A sample of a service that does not
// exist (deleted meanwhile) is dropped, and a sample at a time its service
// already has replaces it. Samples older than SampleRetention go in the
// same transaction.
func (s *Store) AddServiceSamples(ctx context.Context, samples map[string]ServiceSample) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		now := s.now()
		for svc, v := range samples {
			t := v.Time
			if t.IsZero() {
				t = now
			}
			if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO service_samples
				(service, time, qps, p50, p99, requests, errors, ready, desired, spot, ondemand)
				SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM services WHERE name = ?)`,
				svc, t.UnixNano(), v.QPS, v.P50, v.P99, v.Requests, v.Errors, v.Ready, v.Desired, v.Spot, v.OnDemand, svc); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM service_samples WHERE time < ?`, now.Add(-SampleRetention).UnixNano())
		return err
	})
}

// ServiceSamples returns a service's samples taken at or after since,
// oldest first; none is an empty slice. An unknown service is ErrNotFound.
func (s *Store) ServiceSamples(ctx context.Context, service string, since time.Time) ([]ServiceSample, error) {
	var one int
	if err := s.db.QueryRowContext(ctx, `SELECT 1 FROM services WHERE name = ?`, service).Scan(&one); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("service %q: %w", service, ErrNotFound)
		}
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT time, qps, p50, p99, requests, errors, ready, desired, spot, ondemand
		FROM service_samples WHERE service = ? AND time >= ? ORDER BY time`, service, nanos(since))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []ServiceSample{}
	for rows.Next() {
		var v ServiceSample
		var t int64
		if err := rows.Scan(&t, &v.QPS, &v.P50, &v.P99, &v.Requests, &v.Errors, &v.Ready, &v.Desired, &v.Spot, &v.OnDemand); err != nil {
			return nil, err
		}
		v.Time = fromNanos(t)
		out = append(out, v)
	}
	return out, rows.Err()
}
