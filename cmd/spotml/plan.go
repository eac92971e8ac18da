package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/deadline"
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

func newPlanCmd(stdout io.Writer) *cobra.Command {
	var (
		files            []string
		tracePath        string
		speedup          float64
		start, step      time.Duration
		changeover       time.Duration
		offsets          int
		output, instType string
	)
	c := &cobra.Command{
		Use:   "plan -f JOB.yaml --trace FILE",
		Short: "Predict a deadline job's cost against all on-demand, and whether it meets its deadline, on a spot trace (nothing is launched)",
		Long: `plan simulates a Job with a deadline on a recorded spot market (a trace file, see traces/) with the
same deadline policy the control plane runs, and prints its cost against all on-demand and whether it
meets its deadline: from --start, and over --offsets start offsets spread over the trace (the share that
meet it is the probability). Prices come from a spot and an on-demand pool in the -f files, else from
--instance-type in the price table. --speedup reads the trace as a pool with market.speedup replays it,
so that the plan is in the same (compressed) time as that pool's real run.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if len(files) == 0 || tracePath == "" {
				return errors.New("plan: name the job with -f FILE and the market with --trace FILE")
			}
			var job *spec.Job
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
					case d.Pool != nil:
						pools = append(pools, *d.Pool)
					}
				}
			}
			if job == nil {
				return errors.New("-f: no Job in the files; plan needs one (kind: Job) with spec.deadline and spec.work")
			}
			tr, err := trace.Load(tracePath)
			if err != nil {
				return fmt.Errorf("--trace: %w", err)
			}
			if speedup <= 0 {
				return fmt.Errorf("--speedup: must be positive, got %g", speedup)
			}
			p, err := plan(*job, pools, instType, tr, speedup, start, changeover, step, offsets)
			if err != nil {
				return err
			}
			p.Trace = tracePath
			if output == "json" {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(p)
			}
			printPlan(stdout, p)
			return nil
		},
	}
	c.Flags().StringArrayVarP(&files, "filename", "f", nil, "YAML file with the Job (and the pools whose prices to use)")
	c.Flags().StringVar(&tracePath, "trace", "", "spot trace file (any format under traces/)")
	c.Flags().Float64Var(&speedup, "speedup", 1, "replay speed, as a pool's market.speedup")
	c.Flags().DurationVar(&start, "start", 0, "offset into the trace (in trace time) of the run printed first")
	c.Flags().IntVar(&offsets, "offsets", 100, "start offsets spread over the trace, for the mean, worst and deadline probability")
	c.Flags().DurationVar(&changeover, "changeover", time.Minute, "time a start on new capacity costs (launch, boot, restore); spotml measures it on a live pool")
	c.Flags().DurationVar(&step, "step", 0, "simulation step (default: the deadline / 2000, at least 1s)")
	c.Flags().StringVar(&instType, "instance-type", "", "price-table instance type, when -f names no pools")
	c.Flags().StringVarP(&output, "output", "o", "", "json (default: a table)")
	return c
}

// plan simulates job on tr with the deadline policy (deadline.Simulate,
// the same Decide the control plane runs).
func plan(job spec.Job, pools []spec.Pool, instType string, tr *trace.Trace, speedup float64, start, changeover, step time.Duration, offsets int) (Plan, error) {
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
