package server

import (
	"context"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// explainJobs fills in the cost of each job and, for a job with a
// deadline, its standing against it, as the control plane's deadline
// policy reads them (control.DecideJob). A job listed without its tasks
// is read in full only if it has a deadline.
func (s *Server) explainJobs(ctx context.Context, jobs []store.Job, out []api.Job, full bool) error {
	now := s.cfg.Now()
	var nodes []store.Node
	var pools []spec.Pool
	loaded := false
	for i, j := range jobs {
		if !full && j.Spec.Spec.Deadline == "" {
			continue
		}
		if !loaded {
			var err error
			if nodes, err = s.cfg.Store.ListNodes(ctx); err != nil {
				return err
			}
			stored, err := s.cfg.Store.ListPools(ctx)
			if err != nil {
				return err
			}
			for _, p := range stored {
				pools = append(pools, p.Spec)
			}
			loaded = true
		}
		if j.Tasks == nil {
			var err error
			if j, err = s.cfg.Store.GetJob(ctx, j.Spec.Metadata.Name); err != nil {
				continue // deleted meanwhile
			}
		}
		end := now
		if !j.FinishedAt.IsZero() {
			end = j.FinishedAt
		}
		st, ok := control.DecideJob(control.JobView{Job: j, Nodes: nodes, Pools: pools, Now: end})
		c := api.WorkCost(st.Cost)
		out[i].Cost = &c
		if !ok {
			continue
		}
		policy := j.Spec.Spec.Policy
		if policy == "" {
			policy = spec.PolicyDeadline
		}
		at, _ := j.Spec.DeadlineAt(j.SubmittedAt)
		d := &api.JobDeadline{Deadline: at, Policy: policy, Work: dur(st.Work), WorkEstimated: st.WorkEstimated,
			Done: dur(st.Done), Mode: st.Mode.String(), Changeover: dur(st.Changeover), SpotLife: dur(st.SpotLife),
			Projected: st.Projected, AllOnDemand: st.OnDemandCost}
		if j.State != store.JobRunning {
			d.Done, d.Projected = d.Work, st.Cost.Spent
		}
		if span := at.Sub(j.SubmittedAt); span > 0 {
			f := min(max(float64(end.Sub(j.SubmittedAt))/float64(span), 0), 1)
			d.Expected = dur(time.Duration(f * float64(st.Work)))
		}
		out[i].Deadline = d
	}
	return nil
}

func dur(d time.Duration) spec.Duration { return spec.Duration{Duration: d.Round(time.Millisecond)} }
