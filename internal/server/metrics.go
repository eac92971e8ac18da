package server

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// collector reads the fleet's figures from the store at scrape time, so
// every control plane over the same store reports the same numbers.
type collector struct {
	st  *sqlstore.Store
	log *slog.Logger
	now func() time.Time

	nodes, tasks, jobs, evictions, spent, onDemand, replicas, desired *prometheus.Desc
}

func newCollector(st *sqlstore.Store, log *slog.Logger, now func() time.Time) *collector {
	return &collector{st: st, log: log, now: now,
		nodes:     prometheus.NewDesc("spotml_nodes", "Nodes by pool, priority and state (live states only).", []string{"pool", "priority", "state"}, nil),
		tasks:     prometheus.NewDesc("spotml_tasks", "Tasks by state.", []string{"state"}, nil),
		jobs:      prometheus.NewDesc("spotml_jobs", "Jobs by state.", []string{"state"}, nil),
		evictions: prometheus.NewDesc("spotml_node_evictions_total", "Nodes taken back by the spot market.", []string{"pool"}, nil),
		spent:     prometheus.NewDesc("spotml_cost_dollars", "Node cost so far at the pool's price.", []string{"pool", "priority"}, nil),
		onDemand:  prometheus.NewDesc("spotml_cost_ondemand_dollars", "The same node time at on-demand prices.", []string{"pool", "priority"}, nil),
		replicas:  prometheus.NewDesc("spotml_replicas", "Live replicas by service, version, priority and state (noticed: on a node with an eviction notice).", []string{"service", "version", "priority", "state"}, nil),
		desired:   prometheus.NewDesc("spotml_service_desired_replicas", "Replicas the autoscaler wants, by service.", []string{"service"}, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.nodes, c.tasks, c.jobs, c.evictions, c.spent, c.onDemand, c.replicas, c.desired} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nodes, err := c.st.ListNodes(ctx)
	if err != nil {
		c.log.Error("metrics: list nodes", "err", err)
		return
	}
	type key struct{ pool, priority, state string }
	counts := map[key]int{}
	evicted := map[string]int{}
	for _, n := range nodes {
		if store.Live(n.State) {
			counts[key{n.Pool, n.Priority, n.State}]++
		}
		if n.State == store.NodePreempted || n.State == store.NodeDeallocated {
			evicted[n.Pool]++
		}
	}
	for k, v := range counts {
		ch <- prometheus.MustNewConstMetric(c.nodes, prometheus.GaugeValue, float64(v), k.pool, k.priority, k.state)
	}
	for pool, v := range evicted {
		ch <- prometheus.MustNewConstMetric(c.evictions, prometheus.CounterValue, float64(v), pool)
	}
	jobs, err := c.st.ListJobs(ctx)
	if err != nil {
		c.log.Error("metrics: list jobs", "err", err)
		return
	}
	tasks, jobStates := map[string]int{}, map[string]int{}
	for _, j := range jobs {
		jobStates[j.State]++
		for st, n := range j.Counts {
			tasks[st] += n
		}
	}
	for st, n := range tasks {
		ch <- prometheus.MustNewConstMetric(c.tasks, prometheus.GaugeValue, float64(n), st)
	}
	for st, n := range jobStates {
		ch <- prometheus.MustNewConstMetric(c.jobs, prometheus.GaugeValue, float64(n), st)
	}
	svcs, err := c.st.ListServices(ctx, time.Minute)
	if err != nil {
		c.log.Error("metrics: list services", "err", err)
		return
	}
	type rkey struct{ service, version, priority, state string }
	reps := map[rkey]int{}
	for _, sv := range svcs {
		ch <- prometheus.MustNewConstMetric(c.desired, prometheus.GaugeValue, float64(sv.Desired), sv.Name)
		for _, r := range sv.Replicas {
			state := r.State
			if r.Noticed {
				state = "noticed"
			}
			reps[rkey{sv.Name, strconv.Itoa(r.Version), r.Priority, state}]++
		}
	}
	for k, v := range reps {
		ch <- prometheus.MustNewConstMetric(c.replicas, prometheus.GaugeValue, float64(v), k.service, k.version, k.priority, k.state)
	}
	days, runs, err := costRecord(ctx, c.st)
	if err != nil {
		c.log.Error("metrics: runs", "err", err)
		return
	}
	for _, l := range cost.SummarizeDays(days, runs, c.now()).Lines {
		ch <- prometheus.MustNewConstMetric(c.spent, prometheus.CounterValue, l.Spent, l.Pool, l.Priority)
		ch <- prometheus.MustNewConstMetric(c.onDemand, prometheus.CounterValue, l.OnDemand, l.Pool, l.Priority)
	}
}

// costRecord reads what the cost report sums: the per-day totals of
// pruned node runs and the runs still kept.
func costRecord(ctx context.Context, st *sqlstore.Store) ([]cost.DayTotal, []cost.Usage, error) {
	days, err := st.CostDays(ctx)
	if err != nil {
		return nil, nil, err
	}
	runs, err := st.Runs(ctx)
	if err != nil {
		return nil, nil, err
	}
	return days, usages(runs), nil
}

func usages(runs []store.Run) []cost.Usage {
	us := make([]cost.Usage, len(runs))
	for i, u := range runs {
		us[i] = cost.Usage{Node: u.Node, Pool: u.Pool, Priority: u.Priority, Start: u.Start, End: u.End,
			PricePerHour: u.PricePerHour, OnDemandPerHour: u.OnDemandPerHour}
	}
	return us
}
