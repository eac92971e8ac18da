package chaos

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// check runs every assertion on what the soak saw and what spotml stored.
func (s *soak) check(ctx context.Context, rep *Report) {
	s.checkJobs(ctx, rep)
	s.checkProbes(rep)
	s.checkLoad(rep)
	s.mu.Lock()
	defer s.mu.Unlock()
	rep.add("control plane restarts", len(s.restarts) == 0 && s.faults["control-plane kills"] > 0,
		"%d SIGKILLs, each started again and healthy%s", s.faults["control-plane kills"], problems(s.restarts))
	rep.add("no spotml secret in tasks and replicas", len(s.secrets.leaks) == 0 && s.secrets.seen > 0,
		"%d looks at task and replica environments, %d found a credential%s", s.secrets.seen, len(s.secrets.leaks), problems(dedupPrefix(s.secrets.leaks)))
	ok, detail := flatRSS(s.rss, s.cfg.Duration)
	rep.add("control plane RSS flat", ok, "%s", detail)
}

// dedupPrefix keeps one leak per distinct list of variables.
func dedupPrefix(leaks []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range leaks {
		_, vars, _ := strings.Cut(l, "): ")
		if !seen[vars] {
			seen[vars] = true
			out = append(out, l)
		}
	}
	return out
}

// flatRSS judges the control plane's resident memory over the soak: the
// peak of the last third may not pass the peak of the first third by more
// than 25 % + 32 MiB. It also gives the series, the peak of each tenth.
func flatRSS(ss []Sample, d time.Duration) (bool, string) {
	if len(ss) == 0 {
		return false, "no samples"
	}
	var first, last, hwm int64
	tenths := make([]int64, 10)
	for _, s := range ss {
		switch {
		case s.At < d/3:
			first = max(first, s.RSS)
		case s.At >= 2*d/3:
			last = max(last, s.RSS)
		}
		i := min(int(10*s.At/d), 9)
		tenths[i] = max(tenths[i], s.RSS)
		hwm = max(hwm, s.HWM)
	}
	var series []string
	for _, t := range tenths {
		series = append(series, fmt.Sprintf("%d", t>>20))
	}
	ok := last <= first+first/4+32<<20
	return ok, fmt.Sprintf("peak RSS first third %d MiB, last third %d MiB (limit %d MiB); highest VmHWM %d MiB; %d samples; peak per tenth (MiB): %s",
		first>>20, last>>20, (first+first/4+32<<20)>>20, hwm>>20, len(ss), strings.Join(series, " "))
}
