package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// report is the run's figures, printed as Markdown for bench/RESULTS.md.
type report struct {
	cfg          config
	args         []string
	start        time.Time
	elapsed      time.Duration
	load0, load1 string
	cores        int

	ceiling                ceilingResult
	d1Again                *span // (d1) measured again after the spotml ways
	d1AllAgain             *span // (d1) on every core at once, again after them
	spot, onDemand, python *measured
	newFile                []fileCost // before each way, in order
}

// fileCost is what creating a file cost beside a way's output.
type fileCost struct {
	way string
	us  float64 // CPU µs a file
}

// d1 is the ceiling the ratios are taken against: (d1), or, measured
// before and after the spotml ways, the two together (items over CPU
// time: their mean weighted by CPU).
func (rep *report) d1() span {
	d := rep.ceiling.whole
	if a := rep.d1Again; a != nil {
		d = d.plus(*a)
	}
	return d
}

// d1All is (d1) on every core at once, before and after the spotml ways
// together; nil if not measured (one core).
func (rep *report) d1All() *span {
	d := rep.ceiling.allCores
	if d == nil {
		return nil
	}
	if a := rep.d1AllAgain; a != nil {
		both := d.plus(*a)
		return &both
	}
	return d
}

func (rep *report) print(w io.Writer) {
	cfg, d1, d2 := rep.cfg, rep.d1(), rep.ceiling.model
	fmt.Fprintf(w, "\n### %d Fashion-MNIST PNGs scored four ways\n\n", cfg.n)
	fmt.Fprintf(w, "command: `go run ./bench/batchinf %s`\n\n", strings.Join(rep.args[1:], " "))
	fmt.Fprintf(w, "effective flags: -n %d -rate %g -notice %s -evict-at %s -max-nodes %d -workers %d -batch %d -threads %d; wall time %s; "+
		"%d cores; load average %s at the start, %s at the end\n\n",
		cfg.n, cfg.rate, cfg.notice, fmt.Sprint(cfg.evictAt), cfg.maxNodes, cfg.workers, cfg.batch, cfg.threads, rep.elapsed.Round(time.Second), rep.cores, rep.load0, rep.load1)

	fmt.Fprintln(w, "| way | results | makespan | items/s | CPU-s | items per CPU-s | vs (d1) | vs (d2) | evictions | released | leases lost (items) | acks of done items | cost | on demand | results check |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
	row := func(name string, m *measured, spotml bool) {
		if m == nil {
			return
		}
		if m.err != nil && m.span.items == 0 {
			fmt.Fprintf(w, "| %s | not measured: %v | | | | | | | | | | | | | |\n", name, m.err)
			return
		}
		ev, rel, lost, acks, cost, od := "–", "–", "–", "–", "–", "–"
		if spotml {
			ev = fmt.Sprintf("%d", m.evictions)
			rel = fmt.Sprintf("%d", m.released)
			lost = fmt.Sprintf("%d (%d)", m.extraLeases, m.multi)
			acks = fmt.Sprintf("%d", m.redoneAcks)
			cost, od = fmt.Sprintf("$%.5f", m.cost), fmt.Sprintf("$%.5f", m.od)
		}
		check := fmt.Sprintf("%d objects, %d missing, %d extra, %d malformed; class = (d1) for %d, differs for %d",
			m.results.objects, m.results.missing, m.results.extra, m.results.bad, m.results.agree, m.results.differ)
		fmt.Fprintf(w, "| %s | %d | %s | %.0f | %.1f | %.0f | %.2f× | %.3f× | %s | %s | %s | %s | %s | %s | %s |\n", name, m.span.items,
			m.span.wall.Round(100*time.Millisecond), m.span.rate(), m.span.cpu, m.span.perCPUSec(),
			m.span.perCPUSec()/d1.perCPUSec(), m.span.perCPUSec()/d2.perCPUSec(), ev, rel, lost, acks, cost, od, check)
	}
	row("(a) spotml, spot pool, evictions", rep.spot, true)
	row("(b) spotml, on-demand pool", rep.onDemand, true)
	row("(c) Python + PyTorch, one process", rep.python, false)
	d1row := func(name string, d span, check string) {
		fmt.Fprintf(w, "| %s | %d | %s | %.0f | %.1f | %.0f | %.2f× | %.3f× | – | – | – | – | – | – | %s |\n",
			name, d.items, d.wall.Round(100*time.Millisecond), d.rate(), d.cpu, d.perCPUSec(), d.perCPUSec()/d1.perCPUSec(), d.perCPUSec()/d2.perCPUSec(), check)
	}
	if a := rep.d1Again; a != nil {
		d1row("(d1) in-process ONNX Runtime, whole job, before the spotml ways", rep.ceiling.whole, "the reference classes")
		d1row("(d1) the same, after them", *a, "–")
		d1row("(d1) both: the ratios' reference", d1, "–")
	} else {
		d1row("(d1) in-process ONNX Runtime, whole job", d1, "the reference classes")
	}
	if all := rep.d1All(); all != nil {
		d1row(fmt.Sprintf("(d1) on all %d cores at once, before and after the spotml ways", rep.cores), *all, "–")
	}
	fmt.Fprintf(w, "| (d2) in-process ONNX Runtime, model alone | %d | %s | %.0f | %.1f | %.0f | %.1f× | 1× | – | – | – | – | – | – | – |\n\n",
		d2.items, d2.wall.Round(time.Millisecond), d2.rate(), d2.cpu, d2.perCPUSec(), d2.perCPUSec()/d1.perCPUSec())

	for _, x := range []struct {
		name string
		m    *measured
	}{{"(a)", rep.spot}, {"(b)", rep.onDemand}} {
		if x.m == nil || x.m.span.cpu == 0 {
			continue
		}
		fmt.Fprintf(w, "- %s the apply took %s; the control plane had listed the input and queued all %d items %s after it (scoring meanwhile).\n",
			x.name, x.m.apply.Round(10*time.Millisecond), x.m.span.items, x.m.listed.Round(100*time.Millisecond))
		fmt.Fprintf(w, "- %s CPU: %.1f s in all, %.1f s (%.0f %%) of it in the workers; %.0f items per worker CPU-second (%.2f× (d1)); load average %s at its end.\n",
			x.name, x.m.span.cpu, x.m.workerCPU, 100*x.m.workerCPU/x.m.span.cpu, float64(x.m.span.items)/x.m.workerCPU,
			float64(x.m.span.items)/x.m.workerCPU/d1.perCPUSec(), x.m.load)
		fmt.Fprintf(w, "  %s the rest: spotml up (control plane, API, simulated market; with this benchmark's %d polls of 3 API calls) %.1f s, the agents %.1f s.\n",
			x.name, x.m.polls, x.m.upCPU, x.m.agentCPU)
		var parts []string
		for _, p := range x.m.procs {
			what := "agent"
			if p.role == roleWorker {
				what = "worker " + p.worker
			}
			parts = append(parts, fmt.Sprintf("%s (seen %.1f–%.1f s, %.2f CPU-s)", what, p.first.Seconds(), p.last.Seconds(), p.cpu))
		}
		if len(parts) > 0 {
			fmt.Fprintf(w, "  %s its processes: %s.\n", x.name, strings.Join(parts, "; "))
		}
	}
	if len(rep.newFile) > 0 {
		var parts []string
		for _, f := range rep.newFile {
			parts = append(parts, fmt.Sprintf("%s %.0f µs", f.way, f.us))
		}
		fmt.Fprintf(w, "- Creating an empty file beside each way's output, just before it (%d files; every result is a new file, and on ext4 without a journal a new inode costs more for minutes after files nearby were deleted: fsprobe.go): %s of CPU a file.\n",
			probeFiles, strings.Join(parts, ", "))
	}
	if p := rep.python; p != nil && p.err == nil {
		fmt.Fprintf(w, "- (c) the loop itself took %s of the process's %s (the rest: importing torch, loading the model); load average %s at its end.\n",
			p.loop.Round(100*time.Millisecond), p.span.wall.Round(100*time.Millisecond), p.load)
	}
	if a := rep.spot; a != nil && len(a.notices) > 0 {
		var parts []string
		sum := 0
		for _, e := range a.notices {
			parts = append(parts, fmt.Sprintf("%s at %s: %d", e.node, e.at.Round(100*time.Millisecond), e.inFlight))
			sum += e.inFlight
		}
		fmt.Fprintf(w, "- (a) notices seen, with the items in flight on the node then: %s (%d in all); %d of them given by this benchmark (-evict-at), the rest the market's.\n", strings.Join(parts, "; "), sum, rep.spot.forced)
	}

	fmt.Fprintln(w, "\nTargets:")
	met := func(ok bool) string {
		if ok {
			return "**met**"
		}
		return "**not met**"
	}
	for _, x := range []struct {
		name string
		m    *measured
	}{{"(a)", rep.spot}, {"(b)", rep.onDemand}} {
		if x.m == nil || x.m.span.cpu == 0 {
			continue
		}
		r1, r2 := x.m.span.perCPUSec()/d1.perCPUSec(), x.m.span.perCPUSec()/d2.perCPUSec()
		fmt.Fprintf(w, "- ≥ 0.5× the in-process ceiling per core, %s: %.2f× (d1), the same work in one process: %s; %.3f× (d2), the model alone: %s.\n",
			x.name, r1, met(r1 >= 0.5), r2, met(r2 >= 0.5))
		if all := rep.d1All(); all != nil {
			ra := x.m.span.perCPUSec() / all.perCPUSec()
			fmt.Fprintf(w, "  %s against (d1) on all %d cores at once, as spotml's workers use them: %.2f×: %s.\n", x.name, rep.cores, ra, met(ra >= 0.5))
		}
	}
	if a, b := rep.spot, rep.onDemand; a != nil && b != nil && a.span.wall > 0 && b.span.wall > 0 {
		ratio := a.span.wall.Seconds() / b.span.wall.Seconds()
		fmt.Fprintf(w, "- makespan under evictions ≤ 1.3× on demand: %s / %s = %.2f×: %s (%d evictions).\n",
			a.span.wall.Round(100*time.Millisecond), b.span.wall.Round(100*time.Millisecond), ratio, met(ratio <= 1.3), a.evictions)
	}
	if a := rep.spot; a != nil && a.span.cpu > 0 {
		sum := 0
		for _, e := range a.notices {
			sum += e.inFlight
		}
		fmt.Fprintf(w, "- work redone ≤ the items in flight at each eviction, (a): %d leases lost (upper bound on items scored more than once), %d acks of done items, %d in flight at the %d notices seen: %s.\n",
			a.extraLeases, a.redoneAcks, sum, len(a.notices), met(a.extraLeases <= sum))
		if cost, od := a.cost, rep.onDemand; od != nil && od.cost > 0 {
			fmt.Fprintf(w, "- cost: (a) $%.5f against (b) $%.5f on demand: %.0f %%.\n", cost, od.cost, 100*cost/od.cost)
		}
	}
	for _, x := range []struct {
		name string
		m    *measured
	}{{"(a)", rep.spot}, {"(b)", rep.onDemand}, {"(c)", rep.python}} {
		if x.m == nil || x.m.span.items == 0 {
			continue
		}
		fmt.Fprintf(w, "- %d results exactly, %s: %d objects, %d missing, %d extra, %d malformed: %s.\n",
			cfg.n, x.name, x.m.results.objects, x.m.results.missing, x.m.results.extra, x.m.results.bad, met(x.m.results.exact(cfg.n)))
	}
}
