package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/store"
)

func (s *Server) register(w http.ResponseWriter, r *http.Request) error {
	var req api.RegisterRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := nodeOnly(r, req.Node); err != nil {
		return err
	}
	n, err := s.cfg.Store.GetNode(r.Context(), req.Node)
	if err != nil {
		return err
	}
	if !store.Live(n.State) {
		return store.Conflict("node %s is %s and cannot join", n.Name, n.State)
	}
	resp := api.RegisterResponse{BlobURL: s.cfg.Blobs.DefaultURL(), HeartbeatInterval: s.cfg.HeartbeatInterval}
	if p, err := s.cfg.Store.GetPool(r.Context(), n.Pool); err == nil {
		resp.StartTask = p.Spec.Spec.StartTask
	}
	if caller(r).kind == kindJoin {
		// Joined with the shared join token: from now on the agent speaks
		// with its own node's credential only.
		if resp.Credential, err = s.cfg.Store.IssueNodeCredential(r.Context(), n.Name); err != nil {
			return err
		}
	}
	if err := s.cfg.Store.AddEvent(r.Context(), "Joined", "node/"+n.Name, "AgentRegistered", fmt.Sprintf("pid %d", req.PID)); err != nil {
		return err
	}
	writeCompactJSON(w, http.StatusOK, resp)
	return nil
}

// heartbeat answers with every attempt the node should run. An ended node
// gets 409 so its agent stops.
func (s *Server) heartbeat(w http.ResponseWriter, r *http.Request) error {
	var req api.HeartbeatRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := nodeOnly(r, req.Node); err != nil {
		return err
	}
	var progress []store.Progress
	for i, rt := range req.Running {
		p := rt.Progress
		if p == nil {
			continue
		}
		if !(p.Fraction >= 0 && p.Fraction <= 1) || len(p.Message) > api.MaxProgressMessage {
			return badRequest{fmt.Errorf("running[%d].progress: fraction %g must be within 0..1 and the message at most %d bytes", i, p.Fraction, api.MaxProgressMessage)}
		}
		progress = append(progress, store.Progress{TaskID: rt.TaskID, Attempt: rt.Attempt, Fraction: p.Fraction, Message: p.Message})
	}
	n, err := s.cfg.Store.Heartbeat(r.Context(), req.Node, req.Ready)
	if err != nil {
		return err
	}
	if n.StateAt.Equal(n.HeartbeatAt) { // just became ready
		s.kick()
	}
	sts := make([]store.ReplicaStatus, len(req.Replicas))
	for i, rs := range req.Replicas {
		sts[i] = store.ReplicaStatus{ID: rs.ID, Ready: rs.Ready, Addr: rs.Addr, Exited: rs.Exited, Message: rs.Message}
	}
	if err := s.cfg.Store.ReportReplicas(r.Context(), req.Node, sts); err != nil {
		return err
	}
	if err := s.cfg.Store.SetProgress(r.Context(), req.Node, progress); err != nil {
		return err
	}
	// Kept in memory by the store until its next write: most heartbeats
	// read nothing from the database.
	work, err := s.cfg.Store.NodeWork(r.Context(), req.Node)
	if err != nil {
		return err
	}
	resp := api.HeartbeatResponse{Tasks: make([]api.Assignment, 0, len(work.Tasks))}
	for _, t := range work.Tasks {
		resp.Tasks = append(resp.Tasks, api.Assignment{TaskID: t.ID, Attempt: t.Attempt, Job: t.Job, JobUID: t.JobUID,
			Task: t.Name, Index: t.Index, Spec: t.Spec})
	}
	for _, rp := range work.Replicas {
		var sp api.ReplicaSpec
		if err := json.Unmarshal(rp.Spec, &sp); err != nil {
			return fmt.Errorf("replica %s: stored spec: %w", rp.Name, err)
		}
		resp.Replicas = append(resp.Replicas, api.ReplicaAssignment{ID: rp.ID, Name: rp.Name, Service: rp.Service, Version: rp.Version, Spec: sp})
	}
	if s.cfg.Plane != nil {
		resp.Servers = s.cfg.Plane.Servers()
	}
	writeCompactJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) report(w http.ResponseWriter, r *http.Request) error {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		return badRequest{fmt.Errorf("task id %q is not a number", r.PathValue("id"))}
	}
	var req api.ReportRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := nodeOnly(r, req.Node); err != nil {
		return err
	}
	if req.Outcome != api.OutcomeSucceeded && req.Outcome != api.OutcomeFailed && req.Outcome != api.OutcomePreempted {
		return badRequest{fmt.Errorf("outcome: %q is not succeeded, failed or preempted", req.Outcome)}
	}
	ok, err := s.reports.report(r.Context(), store.Report{TaskID: id, Node: req.Node, Attempt: req.Attempt,
		Outcome: req.Outcome, ExitCode: req.ExitCode, Message: req.Message})
	if err != nil {
		return err
	}
	s.kick()
	writeCompactJSON(w, http.StatusOK, api.ReportResponse{Accepted: ok})
	return nil
}

// atRisk records an agent's early warning: the control plane launches a
// replacement; the node is not drained.
func (s *Server) atRisk(w http.ResponseWriter, r *http.Request) error {
	var req api.AtRiskRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := nodeOnly(r, req.Node); err != nil {
		return err
	}
	if _, err := s.cfg.Store.SetAtRisk(r.Context(), req.Node, req.Since, "agent ("+req.Format+" "+req.Detail+")"); err != nil {
		return err
	}
	s.kick()
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) notice(w http.ResponseWriter, r *http.Request) error {
	var req api.NoticeRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := nodeOnly(r, req.Node); err != nil {
		return err
	}
	if _, err := s.cfg.Store.SetNotice(r.Context(), req.Node, req.Deadline, "agent"); err != nil {
		return err
	}
	s.kick()
	w.WriteHeader(http.StatusNoContent)
	return nil
}
