package gateway

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// reason is why an attempt on a replica counts as an error.
type reason int

const (
	reasonNone    reason = iota
	reasonConnect        // connection refused, reset, EOF before an answer
	reasonTimeout        // no whole answer within Config.Timeout
	reasonGone           // 502/503 from a draining or removed replica
	reasonStatus         // any other 5xx answer
	reasonBroken         // the answer broke off after its header
	numReasons
)

var reasonNames = [numReasons]string{"", "connect", "timeout", "gone", "status", "broken"}

// metrics exports the gateway's counters. Per-replica series are read from
// the current routing table at scrape time, so that replicas that left do
// not linger as stale series however often replicas come and go.
type metrics struct {
	g                                              *Gateway
	requests, errors, inflight, retries, noReplica *prometheus.Desc
	buffered                                       *prometheus.Desc
	duration                                       *prometheus.HistogramVec
}

func newMetrics(g *Gateway) *metrics {
	return &metrics{
		g: g,
		requests: prometheus.NewDesc("spotml_gateway_requests_total",
			"Requests answered, by service, replica (empty when the gateway answered before any replica) and status code (499: the client went away).",
			[]string{"service", "replica", "code"}, nil),
		errors: prometheus.NewDesc("spotml_gateway_replica_errors_total",
			"Failed attempts on a replica, by reason: connect, timeout, gone (502/503 while draining or removed), status (other 5xx), broken (answer cut off).",
			[]string{"service", "replica", "reason"}, nil),
		inflight: prometheus.NewDesc("spotml_gateway_in_flight_requests",
			"Requests outstanding at a replica.", []string{"service", "replica"}, nil),
		retries: prometheus.NewDesc("spotml_gateway_retries_total",
			"Requests sent again to another replica after the first failed.", []string{"service"}, nil),
		noReplica: prometheus.NewDesc("spotml_gateway_no_replica_total",
			"Requests answered 503 because the service had no replica to send to.", []string{"service"}, nil),
		buffered: prometheus.NewDesc("spotml_gateway_buffered_bytes",
			"Bytes of request-body buffers the gateway holds, all services together (capped by its max-buffered-bytes).", nil, nil),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "spotml_gateway_request_duration_seconds",
			Help:    "Time from a request's arrival to the end of its answer, retries included.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"service"}),
	}
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.requests, m.errors, m.inflight, m.retries, m.noReplica, m.buffered} {
		ch <- d
	}
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	ch <- prometheus.MustNewConstMetric(m.buffered, prometheus.GaugeValue, float64(m.g.buffered.Load()))
	for _, s := range m.g.table.Load().services {
		for code, n := range s.state.codes.snapshot() {
			counter(m.requests, n, s.name, "", strconv.Itoa(code))
		}
		counter(m.retries, s.state.retries.Load(), s.name)
		counter(m.noReplica, s.state.noReplica.Load(), s.name)
		for _, e := range s.replicas {
			for code, n := range e.b.codes.snapshot() {
				counter(m.requests, n, s.name, e.ID, strconv.Itoa(code))
			}
			for r := reasonConnect; r < numReasons; r++ {
				if n := e.b.errs[r].Load(); n > 0 {
					counter(m.errors, n, s.name, e.ID, reasonNames[r])
				}
			}
			ch <- prometheus.MustNewConstMetric(m.inflight, prometheus.GaugeValue, float64(e.b.inflight.Load()), s.name, e.ID)
		}
	}
}
