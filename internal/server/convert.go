package server

import (
	"encoding/json"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/store"
)

// The one place where the store's rows become the API's objects: a field
// the store keeps for the control plane alone (a node's provider ID, a
// task's queue order, the autoscaler's state) stops here.

func toPool(p store.Pool) api.Pool {
	return api.Pool{Spec: p.Spec, Generation: p.Generation, CreatedAt: p.CreatedAt, UpdatedAt: p.UpdatedAt}
}

func toNode(n store.Node) api.Node {
	return api.Node{Name: n.Name, Pool: n.Pool, Priority: n.Priority, Zone: n.Zone, InstanceType: n.InstanceType,
		State: n.State, Capacity: n.Capacity, PricePerHour: n.PricePerHour, OnDemandPrice: n.OnDemandPrice,
		Host: n.Host, CreatedAt: n.CreatedAt, StateAt: n.StateAt, HeartbeatAt: n.HeartbeatAt, IdleSince: n.IdleSince,
		NoticeDeadline: n.NoticeDeadline, AtRisk: n.AtRisk, Reason: n.Reason, Incarnation: n.Incarnation, Tasks: n.Tasks, Replicas: n.Replicas}
}

func toJob(j store.Job) api.Job {
	out := api.Job{ID: j.ID, UID: j.UID, Spec: j.Spec, State: j.State, SubmittedAt: j.SubmittedAt,
		FinishedAt: j.FinishedAt, Counts: j.Counts, Evictions: j.Evictions, Failures: j.Failures}
	if j.Tasks != nil {
		out.Tasks = convert(j.Tasks, toTask)
	}
	return out
}

func toTask(t store.Task) api.Task {
	out := api.Task{ID: t.ID, JobID: t.JobID, Job: t.Job, JobUID: t.JobUID, Name: t.Name, Index: t.Index, Spec: t.Spec,
		Pool: t.Pool, Priority: t.Priority, Req: t.Req, MaxRetries: t.MaxRetries, State: t.State, Node: t.Node,
		Attempt: t.Attempt, Failures: t.Failures, Evictions: t.Evictions, ExitCode: t.ExitCode, Message: t.Message,
		StartedAt: t.StartedAt, FinishedAt: t.FinishedAt, Progress: t.Progress, ProgressMessage: t.ProgressMessage,
		ProgressAt: t.ProgressAt}
	if t.Attempts != nil {
		out.Attempts = convert(t.Attempts, toAttempt)
	}
	return out
}

func toAttempt(a store.Attempt) api.Attempt {
	return api.Attempt{Attempt: a.Attempt, Node: a.Node, StartedAt: a.StartedAt, EndedAt: a.EndedAt, Outcome: a.Outcome, ExitCode: a.ExitCode,
		FirstProgressAt: a.FirstProgressAt}
}

func toApplyResult(r store.ApplyResult) api.ApplyResult {
	return api.ApplyResult{Kind: r.Kind, Name: r.Name, Action: r.Action}
}

// toService also names the model of the service's current version, read
// from its spec: the list shows it without every client parsing specs.
func toService(v store.Service) api.Service {
	var sp struct {
		Spec struct {
			Model struct {
				URI string `json:"uri"`
			} `json:"model"`
		} `json:"spec"`
	}
	model := ""
	if json.Unmarshal(v.Spec, &sp) == nil {
		model = sp.Spec.Model.URI
	}
	return api.Service{Name: v.Name, Model: model, Spec: v.Spec, Generation: v.Generation, Desired: v.Desired,
		CreatedAt: v.CreatedAt, UpdatedAt: v.UpdatedAt, Replicas: convert(v.Replicas, toReplica), QPS: v.QPS, Ready: v.Ready,
		InFlight: v.Traffic.InFlight, P99: v.Traffic.P99}
}

func toReplica(r store.Replica) api.Replica {
	return api.Replica{ID: r.ID, Name: r.Name, Service: r.Service, Version: r.Version, Spec: r.Spec, Pool: r.Pool,
		Priority: r.Priority, StandIn: r.StandIn, Req: r.Req, State: r.State, Node: r.Node, Addr: r.Addr,
		Noticed: r.Noticed, CreatedAt: r.CreatedAt, StateAt: r.StateAt, ReadyAt: r.ReadyAt, EndedAt: r.EndedAt, Reason: r.Reason}
}

func toEvent(e store.Event) api.Event {
	return api.Event{ID: e.ID, Time: e.Time, Kind: e.Kind, Object: e.Object, Reason: e.Reason, Message: e.Message}
}

func toSample(s store.ServiceSample) api.ServiceSample {
	return api.ServiceSample{Time: s.Time, QPS: s.QPS, P50: s.P50, P99: s.P99, Requests: s.Requests, Errors: s.Errors,
		Ready: s.Ready, Desired: s.Desired, Spot: s.Spot, OnDemand: s.OnDemand, InFlight: s.InFlight, InFlightMax: s.InFlightMax}
}

func toCost(s cost.Summary) api.Cost {
	return api.Cost{Lines: convert(s.Lines, toCostLine), NodeSeconds: s.NodeSeconds, Spent: s.Spent, OnDemand: s.OnDemand,
		Saving: s.Saving, SavingPercent: s.SavingPercent}
}

func toCostLine(l cost.Line) api.CostLine {
	return api.CostLine{Pool: l.Pool, Priority: l.Priority, NodeSeconds: l.NodeSeconds, Spent: l.Spent, OnDemand: l.OnDemand}
}

func toCostHistory(h cost.Timeline) api.CostHistory {
	return api.CostHistory{Times: nonNil(h.Times), Total: toCostSeries(h.Total), Pools: convert(h.Pools, func(p cost.PoolSeries) api.PoolCostSeries {
		return api.PoolCostSeries{Pool: p.Pool, Priority: p.Priority, CostSeries: toCostSeries(p.Series)}
	})}
}

func toCostSeries(s cost.Series) api.CostSeries {
	return api.CostSeries{Spent: nonNil(s.Spent), OnDemand: nonNil(s.OnDemand)}
}

// toToken shows a named token without its secret, which the store does
// not have (it keeps the hash).
func toToken(t store.APIToken) api.Token {
	return api.Token{Name: t.Name, Role: t.Role, CreatedAt: t.CreatedAt}
}

func toBlobObject(o blob.Object) api.BlobObject {
	return api.BlobObject{Key: o.Key, Size: o.Size, ModTime: o.ModTime}
}

// convert maps a list, never to nil: an empty list is [] in JSON.
func convert[T, U any](in []T, f func(T) U) []U {
	out := make([]U, len(in))
	for i, v := range in {
		out[i] = f(v)
	}
	return out
}
