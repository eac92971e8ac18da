package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/client"
	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/deadline"
	"github.com/spotml/spotml/internal/plan"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/trace"
)

// Plan is what `spotml plan` predicts for a job on a trace (-o json).
type Plan struct {
	Job           string        `json:"job"`
	Tasks         int           `json:"tasks"`
	Work          spec.Duration `json:"work"`
	Deadline      spec.Duration `json:"deadline"`
	Changeover    spec.Duration `json:"changeover"`
	SpotPrice     float64       `json:"spotPricePerHour"`
	OnDemandPrice float64       `json:"onDemandPricePerHour"`
	Trace         string        `json:"trace"`
	Speedup       float64       `json:"speedup"`
	// Run is the job started at Start into the trace.
	Start spec.Duration `json:"start"`
	Run   PlanRun       `json:"run"`
	// Over Offsets start offsets spread over the trace: the mean and
	// worst cost as a fraction of on-demand alone, and how often the
	// deadline is met.
	Offsets       int     `json:"offsets"`
	MeanFraction  float64 `json:"meanFraction"`
	WorstFraction float64 `json:"worstFraction"`
	MetFraction   float64 `json:"metFraction"`
}

// PlanRun is one simulated run, for the whole job (all its tasks).
type PlanRun struct {
	Cost          float64       `json:"cost"`
	AllOnDemand   float64       `json:"allOnDemand"`
	Fraction      float64       `json:"fraction"`
	SpotHours     float64       `json:"spotHours"`
	OnDemandHours float64       `json:"onDemandHours"`
	Changeovers   int           `json:"changeovers"`
	Preemptions   int           `json:"preemptions"`
	Finished      spec.Duration `json:"finished"`
	Met           bool          `json:"met"`
}

func newPlanCmd(g *globals, stdout io.Writer) *cobra.Command {
	var (
		files            []string
		traces           []string
		histories        []string
		window, gap      time.Duration
		speedup          float64
		start, step      time.Duration
		changeover       time.Duration
		offsets          int
		output, instType string
		duration         time.Duration
		boot, load       time.Duration
		notice           time.Duration
		qps, target      float64
	)
	c := &cobra.Command{
		Use:   "plan -f SPEC.yaml (--trace FILE | --pool NAME) ...",
		Short: "Predict what a deadline job or a service would cost against all on-demand, and whether it meets its deadline or stays up, on spot traces (nothing is launched)",
		Long: `plan simulates a Job with a deadline or a Service on recorded spot markets (trace files, see traces/)
with the same decisions the control plane runs, and prints its cost against all on-demand: from --start,
and over --offsets start offsets spread over the traces (the share that meet the deadline or the
availability --target is the probability).

A Job (kind: Job with spec.deadline and spec.work) runs on one --trace with the deadline policy.
Prices come from a spot and an on-demand pool in the -f files, else from --instance-type.

A Service runs on its spot pools, one trace each: the -f files' spot pools in order take the --trace
files (or, without --trace, replay their own spec.local.market trace, speedup and start); without spot
pools in the files, each --trace makes one (spot-a, spot-b, ...) of --instance-type, and an on-demand pool
is added. Placement (tiers, spreading, stand-ins, spare spot replicas) is placement.Decide and
placement.Spares, as on the control plane. Printed per tier (dev, prod, strict: the spec's own
placement for its tier, the bare tier for the others): availability (time with the needed ready
replicas), requests answered at --qps, p99 headroom (capacity over load, or ready over needed, that
the service had 99 % of the time) and cost against all on-demand. --boot is a new node's time to
take a replica, --load a replica's start on it, --notice a spot pool's notice where its spec gives none.

--speedup reads the traces as a pool with market.speedup replays them, so that the plan is in the same
(compressed) time as that pool's real run; --start and --duration are in trace time.

--pool NAME plans on what a running spotml (--server) recorded for its spot pool NAME over --window
instead of a trace file: the pool's evictions, and its launches refused for lack of capacity, as a
trace (GET /api/v1/pools/NAME/history). A job takes one --pool; a service one per spot pool, in the
order of the -f files' spot pools, or, without them, the server's pools named. Prices come from the
-f files' pools, else the server's. -o trace prints that history (a trace file --trace and a pool's
market.trace read) instead of planning.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if len(histories) > 0 && len(traces) > 0 {
				return errors.New("--pool: plan on traces (--trace) or on pools' histories (--pool), not both")
			}
			var hist *poolHistories
			if len(histories) > 0 {
				cl, err := g.client()
				if err != nil {
					return err
				}
				hist = &poolHistories{ctx: c.Context(), cl: cl, window: window, gap: gap}
				if output == "trace" {
					if len(histories) != 1 {
						return errors.New("-o trace: name one pool (--pool NAME)")
					}
					b, err := hist.raw(histories[0])
					if err != nil {
						return err
					}
					_, err = stdout.Write(append(b, '\n'))
					return err
				}
			}
			if output == "trace" {
				return errors.New("-o trace: prints a pool's history; name the pool with --pool NAME")
			}
			if len(files) == 0 {
				return errors.New("plan: name the job or service with -f FILE and the market with --trace FILE or --pool NAME")
			}
			var job *spec.Job
			var svc *spec.Service
			var pools []spec.Pool
			for _, f := range files {
				docs, err := spec.ParseFile(f)
				if err != nil {
					return err
				}
				for _, d := range docs {
					switch {
					case d.Job != nil && job == nil:
						job = d.Job
					case d.Service != nil && svc == nil:
						svc = d.Service
					case d.Pool != nil:
						pools = append(pools, *d.Pool)
					}
				}
			}
			if speedup < 0 {
				return fmt.Errorf("--speedup: must be positive, got %g", speedup)
			}
			var err error
			if hist != nil && !slices.ContainsFunc(pools, func(p spec.Pool) bool { return p.Spec.Priority == spec.PrioritySpot }) {
				// The server's pools: the named ones in order, then the
				// on-demand ones.
				if pools, err = hist.pools(histories); err != nil {
					return err
				}
			}
			if job == nil && svc != nil {
				loadTrace := trace.Load
				if hist != nil {
					traces, loadTrace = nil, hist.load
					for _, h := range histories {
						traces = append(traces, "pool/"+h)
					}
				}
				req := plan.Request{Service: *svc, Pools: pools, Traces: traces, InstanceType: instType, Speedup: speedup,
					Start: -1, Duration: duration, Offsets: offsets, Target: target, Boot: boot, Load: load, Notice: notice, QPS: qps}
				if c.Flags().Changed("start") {
					req.Start = start
				}
				if !c.Flags().Changed("speedup") {
					req.Speedup = 0 // the pools' own market.speedup
				}
				if hist != nil {
					// A history is in real time, from its start: not a
					// replay of the pool's market.trace.
					req.Speedup = speedup
					if !c.Flags().Changed("start") {
						req.Start = 0
					}
				}
				rep, err := plan.Services(req, loadTrace)
				if err != nil {
					return err
				}
				if output == "json" {
					enc := json.NewEncoder(stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(rep)
				}
				printServicePlan(stdout, rep)
				return nil
			}
			if job == nil {
				return errors.New("-f: no Job or Service in the files; plan needs one (kind: Job with spec.deadline and spec.work, or kind: Service)")
			}
			if len(traces)+len(histories) != 1 {
				return errors.New("plan: a job runs on one market; give one --trace FILE or one --pool NAME")
			}
			var tr *trace.Trace
			var tick time.Duration
			name := ""
			if hist != nil {
				name = "pool/" + histories[0]
				if tr, err = hist.load(name); err != nil {
					return err
				}
				tick = hist.tick
			} else {
				name = traces[0]
				if tr, err = trace.Load(traces[0]); err != nil {
					return fmt.Errorf("--trace: %w", err)
				}
			}
			if speedup <= 0 {
				return fmt.Errorf("--speedup: must be positive, got %g", speedup)
			}
			p, err := planJob(*job, pools, instType, tr, speedup, start, changeover, step, tick, offsets)
			if err != nil {
				return err
			}
			p.Trace = name
			if output == "json" {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(p)
			}
			printPlan(stdout, p)
			return nil
		},
	}
	c.Flags().StringArrayVarP(&files, "filename", "f", nil, "YAML file with the Job or Service (and the pools whose prices and markets to use)")
	c.Flags().StringArrayVar(&traces, "trace", nil, "spot trace file (any format under traces/); a service takes one per spot pool")
	c.Flags().StringArrayVar(&histories, "pool", nil, "spot pool of the running spotml (--server) whose recorded history to plan on, instead of --trace")
	c.Flags().DurationVar(&window, "window", 0, "--pool: how much of the pool's history to read (default 48h, at most since the pool was made)")
	c.Flags().DurationVar(&gap, "gap", 0, "--pool: the history's tick (default: the window in 10,000 ticks, at least 1s)")
	c.Flags().Float64Var(&speedup, "speedup", 1, "replay speed, as a pool's market.speedup")
	c.Flags().DurationVar(&start, "start", 0, "offset into the traces (in trace time) of the run printed first")
	c.Flags().IntVar(&offsets, "offsets", 100, "start offsets spread over the traces, for the mean, worst and the probability of meeting the deadline or target")
	c.Flags().DurationVar(&changeover, "changeover", time.Minute, "job: time a start on new capacity costs (launch, boot, restore); spotml measures it on a live pool")
	c.Flags().DurationVar(&step, "step", 0, "job: simulation step (default: the deadline / 2000, at least 1s)")
	c.Flags().StringVar(&instType, "instance-type", "", "price-table instance type, when -f names no pools")
	c.Flags().StringVarP(&output, "output", "o", "", "json, or trace (with --pool: print the pool's history as a trace file); default: a table")
	c.Flags().DurationVar(&duration, "duration", 0, "service: how much of the market a run covers, in trace time (default 24h, or what the traces have left)")
	c.Flags().DurationVar(&boot, "boot", time.Minute, "service: a new node's time until it takes a replica (launch, boot, start task)")
	c.Flags().DurationVar(&load, "load", 5*time.Second, "service: a replica's time to ready on a node that is up (model load)")
	c.Flags().DurationVar(&notice, "notice", 30*time.Second, "service: eviction notice of spot pools whose spec.local.notice is unset")
	c.Flags().Float64Var(&qps, "qps", 0, "service: requests per second; sizes the replicas (targetQPSPerReplica) and counts requests answered")
	c.Flags().Float64Var(&target, "target", 0.999, "service: the availability an offset must reach to count as met")
	return c
}

// printServicePlan prints a service plan as a table.
func printServicePlan(w io.Writer, r plan.Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	load := "no load given (--qps)"
	if r.QPS > 0 {
		load = fmt.Sprintf("%g requests/s", r.QPS)
	}
	fmt.Fprintf(tw, "SERVICE\t%s (tier %s), %s\n", r.Service, r.Tier, load)
	for _, p := range r.Pools {
		if p.Trace == "" {
			fmt.Fprintf(tw, "POOL %s\t%s, $%.4f/h, boot %s\n", p.Name, p.Priority, p.PricePerHour, p.Boot)
			continue
		}
		fmt.Fprintf(tw, "POOL %s\tspot, $%.4f/h (on demand $%.4f/h), boot %s, notice %s: %s at %gx\n",
			p.Name, p.PricePerHour, p.OnDemandPerHour, p.Boot, p.Notice, p.Trace, p.Speedup)
	}
	fmt.Fprintf(tw, "RUN\t%s of market (%s real) from %s; %d offsets\n", r.Span.Round(time.Second), r.Duration.Round(time.Second), r.Start, r.Offsets)
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "TIER\tREPLICAS\tAVAILABLE\tANSWERED\tNONE READY\tP99 HEADROOM\tCOST\tALL ON-DEMAND\tNOTICES\tSTAND-INS\tOVER OFFSETS: AVAILABLE MEAN/WORST\tMET %.4g%%\tCOST MEAN/WORST\n", 100*r.Target)
	for _, t := range r.Tiers {
		name := t.Tier
		if t.Spec {
			name += " (spec)"
		}
		answered := "-"
		if t.Run.Answered >= 0 {
			answered = percentOf(t.Run.Answered)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%.2f\t$%.4f = %.2fx\t$%.4f\t%d\t%d\t%s / %s\t%.0f%%\t%.2fx / %.2fx\n",
			name, t.Replicas, percentOf(t.Run.Availability), answered, t.Run.NoneReady.Round(time.Second), t.Run.HeadroomP99,
			t.Run.Cost, t.Run.Fraction, t.Run.AllOnDemand, t.Run.Notices, t.Run.StandIns,
			percentOf(t.MeanAvailability), percentOf(t.WorstAvailability), 100*t.MetTarget, t.MeanFraction, t.WorstFraction)
	}
	tw.Flush()
}

func percentOf(f float64) string {
	if f == 1 {
		return "100%"
	}
	return fmt.Sprintf("%.2f%%", 100*f)
}

// planJob simulates job on tr with the deadline policy (deadline.Simulate,
// the same Decide the control plane runs). A tick (a pool's history has
// one) caps the default step, so that a dip a tick long is seen.
func planJob(job spec.Job, pools []spec.Pool, instType string, tr *trace.Trace, speedup float64, start, changeover, step, tick time.Duration, offsets int) (Plan, error) {
	if job.Spec.Deadline == "" || job.Spec.Work.Duration <= 0 {
		return Plan{}, fmt.Errorf("job %s: plan needs spec.deadline and spec.work (the compute each task needs), e.g. deadline: 36h, work: 24h", job.Metadata.Name)
	}
	dl, abs, err := spec.ParseDeadline(job.Spec.Deadline)
	if err != nil {
		return Plan{}, fmt.Errorf("job %s: spec.deadline: %w", job.Metadata.Name, err)
	}
	if abs {
		dl = time.Until(time.Unix(0, int64(dl)))
	}
	spot, od, err := planPrices(pools, instType)
	if err != nil {
		return Plan{}, err
	}
	tasks := len(job.ExpandTasks())
	j := deadline.Job{Work: job.Spec.Work.Duration, Deadline: dl, Changeover: changeover, SpotPrice: spot, OnDemandPrice: od}
	if err := j.Validate(); err != nil {
		return Plan{}, fmt.Errorf("job %s: %w", job.Metadata.Name, err)
	}
	if step <= 0 {
		step = max(dl/2000, time.Second)
		if tick > 0 {
			step = min(step, tick)
		}
	}
	// The job's tasks run together: spot is there when the trace has a
	// node for each (a gang).
	m := deadline.Market{Trace: compress(tr, speedup), Need: tasks}
	first := deadline.Simulate(j, m, time.Duration(float64(start)/speedup), step, deadline.Options{})
	sw := deadline.SimulateSweep(j, m, deadline.Offsets(m.Trace, dl, offsets), step, deadline.Options{})
	n := float64(tasks)
	return Plan{
		Job: job.Metadata.Name, Tasks: tasks, Work: spec.Duration{Duration: j.Work}, Deadline: spec.Duration{Duration: dl},
		Changeover: spec.Duration{Duration: changeover}, SpotPrice: spot, OnDemandPrice: od, Speedup: speedup,
		Start: spec.Duration{Duration: start},
		Run: PlanRun{Cost: first.Cost * n, AllOnDemand: first.OnDemandCost * n, Fraction: first.Fraction(),
			SpotHours: first.SpotHours * n, OnDemandHours: first.OnDemandHours * n, Changeovers: first.Changeovers,
			Preemptions: first.Preemptions, Finished: spec.Duration{Duration: first.Finished}, Met: !first.Missed},
		Offsets: len(sw.Runs), MeanFraction: sw.MeanFraction, WorstFraction: sw.WorstFraction, MetFraction: sw.Met,
	}, nil
}

// compress returns tr as a pool replaying it speedup times faster sees
// it, in real time.
func compress(tr *trace.Trace, speedup float64) *trace.Trace {
	if speedup == 1 {
		return tr
	}
	c := *tr
	c.Steps = make([]trace.Step, len(tr.Steps))
	for i, s := range tr.Steps {
		s.At = time.Duration(float64(s.At) / speedup)
		c.Steps[i] = s
	}
	c.Duration = time.Duration(float64(tr.Duration) / speedup)
	c.Prices = nil
	return &c
}

// planPrices are the spot and on-demand prices per node-hour: the
// cheapest spot and on-demand pools of the files, else the instance
// type's.
func planPrices(pools []spec.Pool, instType string) (spot, od float64, err error) {
	for _, p := range pools {
		it, _ := cost.Lookup(p.Spec.InstanceType)
		price := it.SpotPerHour
		if p.Spec.Priority == spec.PriorityOnDemand {
			price = it.OnDemandPerHour
		}
		if p.Spec.PricePerHour != nil {
			price = *p.Spec.PricePerHour
		}
		if price <= 0 {
			continue
		}
		if p.Spec.Priority == spec.PrioritySpot && (spot == 0 || price < spot) {
			spot = price
		}
		if p.Spec.Priority == spec.PriorityOnDemand && (od == 0 || price < od) {
			od = price
		}
	}
	if spot == 0 || od == 0 {
		if instType == "" {
			return 0, 0, errors.New("plan: -f names no spot and on-demand pool with prices; add them, or give --instance-type (e.g. p3.2xlarge)")
		}
		it, ok := cost.Lookup(instType)
		if !ok {
			return 0, 0, fmt.Errorf("--instance-type %q is not in the price table; use one of %v", instType, cost.Types())
		}
		if spot == 0 {
			spot = it.SpotPerHour
		}
		if od == 0 {
			od = it.OnDemandPerHour
		}
	}
	return spot, od, nil
}

func printPlan(w io.Writer, p Plan) {
	met := "met"
	if !p.Run.Met {
		met = "MISSED"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "JOB\t%s: %d task(s), %s of work each by a deadline of %s\n", p.Job, p.Tasks, p.Work, p.Deadline)
	fmt.Fprintf(tw, "MARKET\t%s at %gx, changeover %s, spot $%.4f/h, on-demand $%.4f/h\n", p.Trace, p.Speedup, p.Changeover, p.SpotPrice, p.OnDemandPrice)
	fmt.Fprintf(tw, "FROM %s\t$%.4f = %.2fx all on-demand ($%.4f); %.2f spot h, %.2f on-demand h; %d changeovers, %d preemptions; done at %s: deadline %s\n",
		p.Start, p.Run.Cost, p.Run.Fraction, p.Run.AllOnDemand, p.Run.SpotHours, p.Run.OnDemandHours, p.Run.Changeovers, p.Run.Preemptions, p.Run.Finished, met)
	fmt.Fprintf(tw, "OVER %d STARTS\tmean %.2fx, worst %.2fx all on-demand; deadline met in %.0f%%\n", p.Offsets, p.MeanFraction, p.WorstFraction, 100*p.MetFraction)
	tw.Flush()
}

// poolHistories fetches pools' recorded histories from a running spotml
// (GET /pools/NAME/history) as traces named pool/NAME.
type poolHistories struct {
	ctx         context.Context
	cl          *client.Client
	window, gap time.Duration
	tick        time.Duration // of the last history read
}

// raw is pool's history as trace JSON.
func (h *poolHistories) raw(pool string) ([]byte, error) {
	q := url.Values{}
	if h.window > 0 {
		q.Set("window", h.window.String())
	}
	if h.gap > 0 {
		q.Set("gap", h.gap.String())
	}
	path := api.Prefix + "/pools/" + url.PathEscape(pool) + "/history"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var b []byte
	if err := h.cl.Do(h.ctx, http.MethodGet, path, nil, &b); err != nil {
		return nil, fmt.Errorf("--pool %s: %w", pool, err)
	}
	return b, nil
}

// load reads the trace named pool/NAME.
func (h *poolHistories) load(name string) (*trace.Trace, error) {
	pool, ok := strings.CutPrefix(name, "pool/")
	if !ok {
		return nil, fmt.Errorf("%s: not a pool's history (pool/NAME)", name)
	}
	b, err := h.raw(pool)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Metadata struct {
			GapSeconds float64 `json:"gap_seconds"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("--pool %s: history: %w", pool, err)
	}
	h.tick = time.Duration(doc.Metadata.GapSeconds * float64(time.Second))
	tr, err := trace.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("--pool %s: history: %w", pool, err)
	}
	return tr, nil
}

// pools are the server's pools named, in order, then its on-demand pools.
func (h *poolHistories) pools(names []string) ([]spec.Pool, error) {
	var all []api.Pool
	if err := h.cl.Do(h.ctx, http.MethodGet, api.Prefix+"/pools", nil, &all); err != nil {
		return nil, err
	}
	var out []spec.Pool
	for _, n := range names {
		i := slices.IndexFunc(all, func(p api.Pool) bool { return p.Spec.Metadata.Name == n })
		if i < 0 {
			return nil, fmt.Errorf("--pool %s: no such pool on the server (spotml get pools lists them)", n)
		}
		if all[i].Spec.Spec.Priority != spec.PrioritySpot {
			return nil, fmt.Errorf("--pool %s: the pool is %s; name a spot pool", n, all[i].Spec.Spec.Priority)
		}
		out = append(out, all[i].Spec)
	}
	for _, p := range all {
		if p.Spec.Spec.Priority == spec.PriorityOnDemand {
			out = append(out, p.Spec)
		}
	}
	return out, nil
}
