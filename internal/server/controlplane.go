package server

import (
	"errors"
	"net/http"

	"github.com/spotml/spotml/internal/api"
)

// controlPlane lists the control-plane instances sharing the store and
// the leader lease: which instance leads, at which term.
func (s *Server) controlPlane(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Plane == nil {
		return errors.New("controlplane: this server runs no control plane")
	}
	cp, err := s.cfg.Plane.ControlPlane(r.Context())
	if err != nil {
		return err
	}
	out := api.ControlPlane{Term: cp.Lease.Term, LeaderSince: cp.Lease.AcquiredAt, LeaseExpires: cp.Lease.Expires,
		LeaseValid: cp.Lease.Valid, Answered: s.cfg.Plane.Leadership().Instance, Instances: []api.CPInstance{}}
	if cp.Lease.Valid {
		out.Leader = cp.Lease.Holder
	}
	for _, in := range cp.Instances {
		out.Instances = append(out.Instances, api.CPInstance{ID: in.ID, Address: in.Address, Version: in.Version,
			Started: in.Started, LastSeen: in.LastSeen, Leader: cp.Lease.Valid && in.ID == cp.Lease.Holder})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
