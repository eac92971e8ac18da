package store

import (
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
	// InFlight is the requests outstanding at once, the time average
	// over the minute before Time, and InFlightMax the most at once.
	InFlight    float64 `json:"inFlight"`
	InFlightMax int64   `json:"inFlightMax"`
	Ready       int     `json:"ready"`    // ready replicas not on a noticed node
	Desired     int     `json:"desired"`  // replicas the autoscaler wanted
	Spot        int     `json:"spot"`     // of Ready, on spot nodes
	OnDemand    int     `json:"onDemand"` // of Ready, on on-demand nodes
}
