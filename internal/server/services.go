package server

import (
	"encoding/json"
	"net/http"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/store"
)

func (s *Server) listServices(w http.ResponseWriter, r *http.Request) error {
	ss, err := s.cfg.Store.ListServices(r.Context(), control.QPSMaxAge)
	if err != nil {
		return err
	}
	for i := range ss {
		withModel(&ss[i])
	}
	writeJSON(w, http.StatusOK, nonNil(ss))
	return nil
}

func (s *Server) getService(w http.ResponseWriter, r *http.Request) error {
	v, err := s.cfg.Store.GetService(r.Context(), r.PathValue("name"), control.QPSMaxAge)
	if err != nil {
		return err
	}
	withModel(&v)
	writeJSON(w, http.StatusOK, v)
	return nil
}

// withModel fills in the model of the service's current version.
func withModel(v *store.Service) {
	var sp struct {
		Spec struct {
			Model struct {
				URI string `json:"uri"`
			} `json:"model"`
		} `json:"spec"`
	}
	if json.Unmarshal(v.Spec, &sp) == nil {
		v.Model = sp.Spec.Model.URI
	}
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
	writeJSON(w, http.StatusOK, nonNil(rs))
	return nil
}
