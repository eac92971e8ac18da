// Command deadline compares deadline policies for batch jobs on spot over
// the public traces in traces/: on-demand only, greedy (spot whenever it
// is there, on-demand only when the deadline forces it), Uniform Progress
// as published (Can't Be Late §5.2), and spotml's policy (internal/deadline:
// Uniform Progress with the lifetime threshold and the budget guard). Each
// scenario runs from every start offset, every 2 h, that leaves the job's
// deadline inside the trace, and reports the mean and worst cost as a
// fraction of on-demand alone and the deadline misses.
//
//	go run ./bench/deadline [-traces traces] [-every 2h]
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spotml/spotml/internal/deadline"
	"github.com/spotml/spotml/internal/trace"
)

type scenario struct {
	file           string
	need           int
	work, deadline time.Duration
	changeover     time.Duration
	k              float64 // on-demand / spot price
}

func main() {
	dir := flag.String("traces", "traces", "the traces folder")
	every := flag.Duration("every", 2*time.Hour, "between start offsets")
	flag.Parse()
	const (
		w2b  = "cant-be-late/preemption_1-node_aws-04-22-2023_us-west-2b_v100_1.json"
		e1c  = "cant-be-late/preemption_1-node_aws-04-22-2023_us-east-1c_v100_1.json"
		r5   = "cant-be-late/preemption_1-node_aws-04-19-2023_us-east-1c_intel_64.json"
		gcp  = "cant-be-late/preemption_1-node_gcp-04-30-2023_us-east1-b_c3-88.json"
		a1a  = "cant-be-late/availability_1-node_aws-02-15-2023_us-east-1a_v100_1.json"
		a2b  = "cant-be-late/availability_1-node_aws-02-15-2023_us-west-2b_v100_1.json"
		a2a8 = "cant-be-late/availability_1-node_aws-10-26-2022_us-west-2a_v100_8.json"
		g4   = "cant-be-late/preemption_4-node_aws-08-03-2023_us-east-2a_v100_1.json"
		g16  = "cant-be-late/availability_16-node_aws-08-27-2023_us-east-2b_v100_1.json"
	)
	h := time.Hour
	scenarios := []scenario{
		{w2b, 1, 72 * h, 100 * h, 18 * time.Minute, 3.03},
		{w2b, 1, 72 * h, 84 * h, 18 * time.Minute, 3.03},
	}
	for _, f := range []string{w2b, e1c, r5, gcp, a1a, a2b, a2a8} {
		scenarios = append(scenarios, scenario{f, 1, 24 * h, 36 * h, 12 * time.Minute, 3.03})
	}
	scenarios = append(scenarios,
		scenario{g4, 4, 24 * h, 36 * h, 12 * time.Minute, 3.03},
		scenario{g16, 16, 24 * h, 36 * h, 12 * time.Minute, 3.03})

	policies := []struct {
		name string
		opt  deadline.Options
		od   bool
	}{
		{"on-demand", deadline.Options{}, true},
		{"greedy", deadline.Options{Greedy: true}, false},
		{"UP", deadline.Options{NoThreshold: true, NoBudget: true}, false},
		{"spotml", deadline.Options{}, false},
	}
	host, _ := os.Hostname()
	fmt.Printf("go run ./bench/deadline -every %s   (%s)\n\n", *every, host)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "trace\tjob (work/deadline/changeover/k)\tstarts\tpolicy\tmean\tworst\tmisses\tchangeovers/run\t")
	for _, sc := range scenarios {
		tr, err := trace.Load(filepath.Join(*dir, sc.file))
		if err != nil {
			log.Fatal(err)
		}
		job := deadline.Job{Work: sc.work, Deadline: sc.deadline, Changeover: sc.changeover, SpotPrice: 1, OnDemandPrice: sc.k}
		m := deadline.Market{Trace: tr, Need: sc.need}
		var starts []time.Duration
		for s := time.Duration(0); s+sc.deadline <= tr.Duration; s += *every {
			starts = append(starts, s)
		}
		for _, p := range policies {
			var sum, worst float64
			misses, changes := 0, 0
			for _, s := range starts {
				var r deadline.Result
				if p.od {
					r = deadline.Simulate(job, deadline.Market{Trace: &trace.Trace{}, Need: 1}, 0, 0, deadline.Options{})
				} else {
					r = deadline.Simulate(job, m, s, 0, p.opt)
				}
				sum += r.Fraction()
				worst = max(worst, r.Fraction())
				changes += r.Changeovers
				if r.Missed {
					misses++
				}
			}
			n := float64(len(starts))
			fmt.Fprintf(tw, "%s\t%s/%s/%s/%.2f\t%d\t%s\t%.3f\t%.3f\t%d\t%.1f\t\n", short(sc.file, sc.need), hours(sc.work), hours(sc.deadline),
				sc.changeover, sc.k, len(starts), p.name, sum/n, worst, misses, float64(changes)/n)
		}
	}
	tw.Flush()
}

func hours(d time.Duration) string { return fmt.Sprintf("%gh", d.Hours()) }

func short(file string, need int) string {
	base := filepath.Base(file)
	if need > 1 {
		return fmt.Sprintf("%s (all %d)", base, need)
	}
	return base
}
