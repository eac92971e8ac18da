package server

import (
	"net/http"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/control"
)

func (s *Server) listServices(w http.ResponseWriter, r *http.Request) error {
	ss, err := s.cfg.Store.ListServices(r.Context(), control.QPSMaxAge)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, convert(ss, toService))
	return nil
}

func (s *Server) getService(w http.ResponseWriter, r *http.Request) error {
	v, err := s.cfg.Store.GetService(r.Context(), r.PathValue("name"), control.QPSMaxAge)
	if err != nil {
		return err
	}
	out := toService(v)
	// What it cost: every replica it had, on the node it ran on.
	reps, err := s.cfg.Store.ServiceReplicaHistory(r.Context(), v.Name)
	if err != nil {
		return err
	}
	nodes, err := s.cfg.Store.ListNodes(r.Context())
	if err != nil {
		return err
	}
	c := api.WorkCost(control.ServiceCost(reps, nodes, s.cfg.Now()))
	out.Cost = &c
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) deleteService(w http.ResponseWriter, r *http.Request) error {
	if err := s.cfg.Store.DeleteService(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	s.kick()
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// listReplicas lists live replicas, of one service with ?service=NAME.
func (s *Server) listReplicas(w http.ResponseWriter, r *http.Request) error {
	rs, err := s.cfg.Store.ListReplicas(r.Context(), r.URL.Query().Get("service"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, convert(rs, toReplica))
	return nil
}
