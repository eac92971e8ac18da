package placement

import (
	"fmt"
	"slices"
	"time"
)

// Preemption is one spot node of a pool taken back by its market.
type Preemption struct {
	Pool string
	At   time.Time
	// Warning is how long before At its notice came (0: none), and Age
	// how old the node was when it came (or at At, without one).
	Warning, Age time.Duration
}

// threat says whether a preemption could have cost a ready replica: its
// notice was shorter than a replacement takes, so the replacement
// launched at the notice was not ready in time; or the node got it
// before a replica on it could have been ready, which is what a
// replacement that was itself taken back looks like (a flapping market).
// A preemption announced well ahead, of a node that had been up a while,
// is ridden out by the replacement alone and needs no spare.
func (e Preemption) threat(replace time.Duration) bool {
	return e.Warning < replace || e.Age < replace
}

// History is what a service's spot pools did lately, for Spares.
type History struct {
	// Preemptions of the pools' spot nodes within Window, any order.
	Preemptions []Preemption
	Window      time.Duration
	// Replace is how long a replacement replica takes from its creation
	// to ready (a node boot, a model load), as measured; a wave is the
	// preemptions that fall within one Replace of each other.
	Replace time.Duration
}

// Spares sizes the spare spot replicas of a service with spot replicas on
// the spot share, spread over pools (the spot pools it may use): the
// fewest spares s such that the worst wave in h, had it hit the spot+s
// replicas spread over those pools, would have left at least spot of
// them. Only preemptions that were a threat count (see threat): where
// notices outlast a replacement, spares buy nothing. A wave takes from each pool at most the replicas the pool holds
// (spread: at most ⌈(spot+s)/pools⌉), so spreading over more pools needs
// fewer spares, and a pool that loses its nodes in bulk (capacity gone)
// costs a whole pool's share. No preemptions, no spares; at most spot
// spares (the count doubled), even if waves were larger. The reason says
// what the count rests on.
//
// It is SkyServe's over-provisioning (EuroSys'25) sized from the pools'
// own history rather than fixed: spare spot capacity is a fifth of
// on-demand's price, and holding a spare is what keeps a wave from
// becoming an outage while the replacements boot.
//
// Without spread (spread false) a pool may hold every replica.
func Spares(spot int, pools []string, spread bool, h History) (int, string) {
	if spot <= 0 || len(pools) == 0 {
		return 0, "no spot replicas"
	}
	var seen []Preemption
	ridden := 0
	for _, e := range h.Preemptions {
		switch {
		case !slices.Contains(pools, e.Pool):
		case e.threat(h.Replace):
			seen = append(seen, e)
		default:
			ridden++
		}
	}
	if len(seen) == 0 && ridden > 0 {
		return 0, fmt.Sprintf("%d spot preemptions in pools %v in the last %s, each announced %s or more ahead by a node up that long: replacements were ready in time",
			ridden, pools, h.Window, h.Replace)
	}
	if len(seen) == 0 {
		return 0, fmt.Sprintf("no spot preemptions in pools %v in the last %s", pools, h.Window)
	}
	slices.SortFunc(seen, func(a, b Preemption) int { return a.At.Compare(b.At) })

	// The waves: from each preemption, those within Replace after it,
	// counted per pool.
	var waves []map[string]int
	for i, e := range seen {
		w := map[string]int{}
		for _, f := range seen[i:] {
			if f.At.Sub(e.At) > h.Replace {
				break
			}
			w[f.Pool]++
		}
		waves = append(waves, w)
	}
	loss := func(total int) (worst, at int) {
		share := total
		if spread {
			share = (total + len(pools) - 1) / len(pools)
		}
		for i, w := range waves {
			l := 0
			for _, c := range w {
				l += min(c, share)
			}
			if l = min(l, total); l > worst {
				worst, at = l, i
			}
		}
		return worst, at
	}
	for s := 1; s <= spot; s++ {
		// Any preemption is a wave of at least one, so s is at least 1.
		if l, at := loss(spot + s); l <= s {
			return s, fmt.Sprintf("the worst wave in the last %s (%d preemptions within %s from %s) would take %d of %d spot replicas%s",
				h.Window, waveSize(waves[at]), h.Replace, seen[at].At.UTC().Format(time.RFC3339), l, spot+s, over(spread, pools))
		}
	}
	l, at := loss(2 * spot)
	return spot, fmt.Sprintf("capped at %d: the worst wave in the last %s (%d preemptions within %s from %s) would take %d of %d spot replicas%s",
		spot, h.Window, waveSize(waves[at]), h.Replace, seen[at].At.UTC().Format(time.RFC3339), l, 2*spot, over(spread, pools))
}

func over(spread bool, pools []string) string {
	if spread {
		return fmt.Sprintf(" spread over %d pools", len(pools))
	}
	return " (not spread)"
}

func waveSize(w map[string]int) int {
	n := 0
	for _, c := range w {
		n += c
	}
	return n
}
