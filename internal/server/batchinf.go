package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/bmatcuk/doublestar/v4"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/batchinf/broker"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/inference"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// batchRoutes adds the BatchInference endpoints: status for the CLI and
// console, and the queue for workers (agent credentials).
func (s *Server) batchRoutes(read, write, agent func(string, func(http.ResponseWriter, *http.Request) error)) {
	p := api.Prefix
	read("GET "+p+"/batchinferences", s.listBatches)
	read("GET "+p+"/batchinferences/{name}", s.getBatch)
	read("GET "+p+"/batchinferences/{name}/items", s.batchItems)
	write("DELETE "+p+"/batchinferences/{name}", s.deleteBatch)
	agent("GET "+p+"/agent/batches/{name}", s.workerBatch)
	agent("POST "+p+"/agent/batches/{name}/lease", s.leaseItems)
	agent("POST "+p+"/agent/batches/{name}/ack", s.ackItems)
	agent("POST "+p+"/agent/batches/{name}/release", s.releaseItems)
	agent("POST "+p+"/agent/batches/{name}/claim", s.claimItems)
	agent("POST "+p+"/agent/batches/{name}/subscribed", s.workerSubscribed)
}

// BatchInputPages lists a BatchInference's items, the blobs under
// input.uri whose path relative to it matches input.pattern, in key
// order, handing them to page as the store lists them (a listing page at
// a time; pages without a match are skipped). An error from page ends the
// listing and is returned.
func BatchInputPages(ctx context.Context, blobs *blob.Store, in spec.BatchInput, page func([]string) error) error {
	pattern := in.Pattern
	if pattern == "" {
		pattern = spec.DefaultBatchPattern
	}
	return blobs.ListPages(ctx, in.URI, 0, func(objs []blob.Object) error {
		var keys []string
		for _, o := range objs {
			if ok, _ := doublestar.Match(pattern, o.Key); ok {
				keys = append(keys, o.Key)
			}
		}
		if len(keys) == 0 {
			return nil
		}
		return page(keys)
	})
}

// errListed ends an apply's listing at the first page with a match.
var errListed = errors.New("listed enough")

// checkBatch checks what only the stores can tell about a BatchInference
// at apply time: the pool exists, the input matches something (trigger
// once), the model is there and reads, a broker answers. It lists the
// input only up to the first page with a match and returns that page's
// inputs; the control plane lists and queues the rest after the apply, so
// that an apply takes as long for 70,000 inputs as for 10.
func (s *Server) checkBatch(ctx context.Context, b spec.BatchInference, pools map[string]spec.Pool) ([]string, error) {
	name := b.Metadata.Name
	sp := b.Spec
	if sp.Pool != "" {
		if _, ok := pools[sp.Pool]; !ok {
			return nil, fmt.Errorf("batchinference %s: spec.pool: no pool named %q; apply the pool first or in the same file (spotml get pools lists them)", name, sp.Pool)
		}
	}
	if s.cfg.Blobs == nil {
		return nil, fmt.Errorf("batchinference %s: this control plane has no blob store to read spec.input from", name)
	}
	if err := s.checkBatchModel(ctx, name, sp); err != nil {
		return nil, err
	}
	var inputs []string
	err := BatchInputPages(ctx, s.cfg.Blobs, sp.Input, func(keys []string) error {
		inputs = keys
		return errListed
	})
	if err != nil && !errors.Is(err, errListed) {
		return nil, fmt.Errorf("batchinference %s: spec.input.uri: cannot list %q: %v", name, sp.Input.URI, err)
	}
	if len(inputs) == 0 && sp.Trigger != spec.TriggerWatch {
		return nil, fmt.Errorf("batchinference %s: spec.input: nothing under %q matches pattern %q; check the prefix (spotml blob ls %s) and the pattern, or use trigger: watch to wait for inputs",
			name, sp.Input.URI, sp.Input.Pattern, sp.Input.URI)
	}
	if broker.IsBroker(sp.Queue.URI) {
		// A broker that does not answer now would leave the batch waiting
		// for ever: refuse it while the user is there to fix the URL.
		if err := broker.Probe(ctx, sp.Queue); errors.As(err, new(broker.Refused)) {
			return nil, fmt.Errorf("batchinference %s: %v", name, err)
		} else if err != nil {
			return nil, fmt.Errorf("batchinference %s: spec.queue.uri: the broker does not answer: %v; check the URL and that the broker runs (and its address and credentials: %s for nats://, %s for rabbit://, Google's Application Default Credentials or %s for gcppubsub://, the AWS SDK's credentials and region, or AWS_ENDPOINT_URL_SQS, for awssqs://)", name, err, broker.EnvNATS, broker.EnvRabbit, broker.EnvPubSubEmulator)
		}
	}
	return inputs, nil
}

// checkBatchModel checks that the model is there: for the builtin runtime
// an ONNX file, for a command a file or a non-empty prefix (a server may
// load a directory).
func (s *Server) checkBatchModel(ctx context.Context, name string, sp spec.BatchSpec) error {
	if sp.Runtime.Type == spec.RuntimeCommand && strings.HasSuffix(sp.Model.URI, "/") {
		objs, err := s.cfg.Blobs.List(ctx, sp.Model.URI)
		switch {
		case err != nil:
			return fmt.Errorf("batchinference %s: spec.model.uri: cannot list %q: %v", name, sp.Model.URI, err)
		case len(objs) == 0:
			return fmt.Errorf("batchinference %s: spec.model.uri: nothing under %q; upload the model first (spotml blob put) or fix the path", name, sp.Model.URI)
		}
		return nil
	}
	model, err := s.cfg.Blobs.ReadAll(ctx, sp.Model.URI)
	switch {
	case blob.IsNotExist(err):
		return fmt.Errorf("batchinference %s: spec.model.uri: %q does not exist; upload it first (spotml blob put) or fix the path", name, sp.Model.URI)
	case err != nil:
		return fmt.Errorf("batchinference %s: spec.model.uri: cannot read %q: %v", name, sp.Model.URI, err)
	case sp.Runtime.Type == spec.RuntimeCommand:
		return nil // the user's server reads it, in whatever format it takes
	}
	if err := inference.CheckONNX(model); err != nil {
		return fmt.Errorf("batchinference %s: spec.model.uri: %q (%d bytes): %v; the builtin runtime takes an ONNX file (export the model with torch.onnx.export or tf2onnx), or use runtime: command for another format", name, sp.Model.URI, len(model), err)
	}
	return nil
}

// checkBatches checks each BatchInference against the pools (stored and
// applied with it) and the blob store, and lists its first inputs.
func (s *Server) checkBatches(ctx context.Context, pools []spec.Pool, batches []spec.BatchInference) ([][]string, error) {
	if len(batches) == 0 {
		return nil, nil
	}
	stored, err := s.cfg.Store.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	all := map[string]spec.Pool{}
	for _, p := range stored {
		all[p.Spec.Metadata.Name] = p.Spec
	}
	for _, p := range pools {
		all[p.Metadata.Name] = p
	}
	out := make([][]string, len(batches))
	var errs []error
	for i, b := range batches {
		inputs, err := s.checkBatch(ctx, b, all)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[i] = inputs
	}
	if err := errors.Join(errs...); err != nil {
		return nil, badRequest{err}
	}
	return out, nil
}

// applyBatches stores each BatchInference with its first items, after the
// other documents of the apply (which it may name: its pool); the control
// plane queues the rest.
func (s *Server) applyBatches(ctx context.Context, res []store.ApplyResult, batches []spec.BatchInference, inputs [][]string) ([]store.ApplyResult, error) {
	for i, b := range batches {
		r, err := s.cfg.Store.ApplyBatch(ctx, b, inputs[i])
		if err != nil {
			return nil, err
		}
		res = append(res, r)
	}
	return res, nil
}

func (s *Server) listBatches(w http.ResponseWriter, r *http.Request) error {
	bs, err := s.cfg.Store.ListBatches(r.Context())
	if err != nil {
		return err
	}
	out, err := s.batchStatus(r.Context(), bs)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getBatch(w http.ResponseWriter, r *http.Request) error {
	b, err := s.cfg.Store.GetBatch(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	out, err := s.batchStatus(r.Context(), []store.Batch{b})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out[0])
	return nil
}

// batchItems lists a batch's items, ?state=failed for the failed ones.
func (s *Server) batchItems(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if _, err := s.cfg.Store.GetBatch(r.Context(), name); err != nil {
		return err
	}
	state := r.URL.Query().Get("state")
	switch state {
	case "", store.ItemPending, store.ItemLeased, store.ItemDone, store.ItemFailed:
	default:
		return badRequest{fmt.Errorf("state: %q is not pending, leased, done or failed", state)}
	}
	limit := 0
	if l := r.URL.Query().Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 0 {
			return badRequest{fmt.Errorf("limit: %q is not a non-negative number", l)}
		}
		limit = n
	}
	items, err := s.cfg.Store.BatchItems(r.Context(), name, state, limit)
	if err != nil {
		return err
	}
	out := make([]api.BatchItem, len(items))
	for i, it := range items {
		out[i] = api.BatchItem{ID: it.ID, Input: it.Input, State: it.State, Worker: it.Worker, Attempts: it.Attempts, Reason: it.Reason, DoneAt: it.DoneAt}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// deleteBatch removes a batch, its queue and its worker jobs (whose
// workers stop at their agents' next heartbeat).
func (s *Server) deleteBatch(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := s.cfg.Store.DeleteBatch(r.Context(), name); err != nil {
		return err
	}
	jobs, err := s.cfg.Store.ListJobs(r.Context())
	if err != nil {
		return err
	}
	for _, j := range jobs {
		if b, ok := api.BatchOfJob(j.Spec.Metadata.Name); ok && b == name {
			if err := s.cfg.Store.DeleteJob(r.Context(), j.Spec.Metadata.Name); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
		}
	}
	s.kick()
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// batchStatus adds to each batch what its worker jobs say: workers,
// evictions, and the cost of their node time against on demand.
func (s *Server) batchStatus(ctx context.Context, bs []store.Batch) ([]api.BatchInference, error) {
	out := make([]api.BatchInference, len(bs))
	if len(bs) == 0 {
		return out, nil
	}
	jobs, err := s.cfg.Store.ListJobs(ctx)
	if err != nil {
		return nil, err
	}
	nodes, err := s.cfg.Store.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	byNode := map[string]store.Node{}
	for _, n := range nodes {
		byNode[n.Name] = n
	}
	index := map[string]int{}
	now := s.now()
	for i, b := range bs {
		index[b.Name] = i
		c := b.Counts
		o := api.BatchInference{Name: b.Name, Spec: b.Spec, State: b.State, Listing: b.Listing, CreatedAt: b.CreatedAt, StartedAt: b.StartedAt, FinishedAt: b.FinishedAt,
			Total: c.Total, Pending: c.Pending, InFlight: c.Leased, Done: c.Done, Failed: c.Failed, Released: c.Released, Expired: c.Expired, Redone: c.Redone}
		// The rate over the last minute, or since the first lease when
		// that is shorter; a finished batch's over its whole run.
		switch {
		case b.State != store.BatchRunning && !b.StartedAt.IsZero() && b.FinishedAt.After(b.StartedAt):
			o.Throughput = float64(c.Done) / b.FinishedAt.Sub(b.StartedAt).Seconds()
		case !b.StartedAt.IsZero():
			window := min(now.Sub(b.StartedAt), time.Minute)
			if window > time.Second {
				o.Throughput = float64(c.DoneRecently) / window.Seconds()
			}
		}
		if left := c.Left(); left > 0 && o.Throughput > 0 {
			o.ETA = time.Duration(float64(left) / o.Throughput * float64(time.Second)).Round(time.Second)
		}
		out[i] = o
	}
	for _, j := range jobs {
		b, ok := api.BatchOfJob(j.Spec.Metadata.Name)
		if !ok {
			continue
		}
		i, ok := index[b]
		if !ok {
			continue
		}
		o := &out[i]
		o.Workers += j.Counts[store.TaskRunning]
		o.WorkersPending += j.Counts[store.TaskPending]
		o.Evictions += j.Evictions
		full, err := s.cfg.Store.GetJob(ctx, j.Spec.Metadata.Name)
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			return nil, err
		}
		for _, t := range full.Tasks {
			for _, a := range t.Attempts {
				n, ok := byNode[a.Node]
				if !ok {
					continue
				}
				end := a.EndedAt
				if end.IsZero() {
					end = now
				}
				hours := end.Sub(a.StartedAt).Hours()
				share := 1.0
				if n.Capacity.CPU > 0 && t.Req.CPU > 0 {
					share = math.Min(1, t.Req.CPU/n.Capacity.CPU)
				}
				o.Cost += hours * n.PricePerHour * share
				o.OnDemandCost += hours * n.OnDemandPrice * share
			}
		}
	}
	return out, nil
}

// workerBatch tells a worker its batch's spec and state, without the
// counts, cost and workers of GET /batchinferences/NAME: counting reads
// every item, and every worker that starts asks.
func (s *Server) workerBatch(w http.ResponseWriter, r *http.Request) error {
	b, err := s.cfg.Store.GetBatchSpec(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.BatchInference{Name: b.Name, Spec: b.Spec, State: b.State, Listing: b.Listing,
		CreatedAt: b.CreatedAt, StartedAt: b.StartedAt, FinishedAt: b.FinishedAt})
	return nil
}

// workerNode is the node a worker ID names ("NODE:JOB/TASK#ATTEMPT"): a
// node's credential acts for its own workers only.
func workerNode(r *http.Request, worker string) error {
	node, _, ok := strings.Cut(worker, ":")
	if !ok || node == "" {
		return badRequest{fmt.Errorf("worker: %q is not NODE:JOB/TASK#ATTEMPT", worker)}
	}
	return nodeOnly(r, node)
}

func (s *Server) leaseItems(w http.ResponseWriter, r *http.Request) error {
	var req api.LeaseRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := workerNode(r, req.Worker); err != nil {
		return err
	}
	if req.Max < 1 || req.Max > 4096 {
		return badRequest{fmt.Errorf("max: %d is out of range; ask for 1 to 4096 items", req.Max)}
	}
	name := r.PathValue("name")
	b, err := s.cfg.Store.GetBatchSpec(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		// Deleted: the worker has nothing more to do.
		writeJSON(w, http.StatusOK, api.LeaseResponse{})
		return nil
	}
	if err != nil {
		return err
	}
	ttl := b.Spec.Spec.Queue.LeaseTimeout.Duration
	items, err := s.cfg.Store.LeaseBatchItems(r.Context(), name, req.Worker, req.Max, ttl)
	if err != nil {
		return err
	}
	return s.leaseResponse(w, r, b, ttl, items)
}

// leaseResponse answers a lease or a claim. What is left is counted only
// when nothing came (the worker then decides whether to wait or exit):
// counting reads every item of the batch.
func (s *Server) leaseResponse(w http.ResponseWriter, r *http.Request, b store.Batch, ttl time.Duration, items []store.BatchItem) error {
	resp := api.LeaseResponse{LeaseTimeout: ttl, Running: b.State == store.BatchRunning, Listing: b.Listing, Items: make([]api.LeasedItem, len(items))}
	if len(items) == 0 {
		left, err := s.cfg.Store.BatchLeft(r.Context(), b.Name)
		if err != nil {
			return err
		}
		resp.Left = left
	} else {
		resp.Left = len(items) // at least
	}
	for i, it := range items {
		resp.Items[i] = api.LeasedItem{ID: it.ID, Input: it.Input}
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) ackItems(w http.ResponseWriter, r *http.Request) error {
	var req api.AckRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := workerNode(r, req.Worker); err != nil {
		return err
	}
	name := r.PathValue("name")
	n, err := s.cfg.Store.AckBatchItems(r.Context(), name, req.Done)
	if err != nil {
		return err
	}
	if len(req.Failed) > 0 {
		fails := make([]store.ItemFailure, len(req.Failed))
		for i, f := range req.Failed {
			fails[i] = store.ItemFailure{ID: f.ID, Reason: f.Reason}
		}
		m, err := s.cfg.Store.FailBatchItems(r.Context(), name, fails)
		if err != nil {
			return err
		}
		n += m
	}
	writeJSON(w, http.StatusOK, api.BatchCounts{Changed: n})
	return nil
}

// claimItems takes for a worker the items of the messages it got from
// its batch's broker, and says how the batch stands, as a lease does.
func (s *Server) claimItems(w http.ResponseWriter, r *http.Request) error {
	var req api.ClaimRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := workerNode(r, req.Worker); err != nil {
		return err
	}
	if len(req.IDs) > spec.MaxBatchGroupSize*4 {
		return badRequest{fmt.Errorf("ids: %d items; claim at most %d at once", len(req.IDs), spec.MaxBatchGroupSize*4)}
	}
	name := r.PathValue("name")
	b, err := s.cfg.Store.GetBatchSpec(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		writeJSON(w, http.StatusOK, api.LeaseResponse{})
		return nil
	}
	if err != nil {
		return err
	}
	ttl := b.Spec.Spec.Queue.LeaseTimeout.Duration
	items, err := s.cfg.Store.ClaimBatchItems(r.Context(), name, req.Worker, req.IDs, ttl)
	if err != nil {
		return err
	}
	return s.leaseResponse(w, r, b, ttl, items)
}

// workerSubscribed hears that a worker now receives from its batch's
// broker: items sent before and not claimed go out again at once, since a
// broker such as core NATS drops what nobody was subscribed for (the
// workers of a batch scaled from zero subscribe after the first sends).
func (s *Server) workerSubscribed(w http.ResponseWriter, r *http.Request) error {
	var req api.ClaimRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := workerNode(r, req.Worker); err != nil {
		return err
	}
	n, err := s.cfg.Store.ResendBatchItems(r.Context(), r.PathValue("name"), s.now())
	if err != nil {
		return err
	}
	if n > 0 {
		s.kick()
	}
	writeJSON(w, http.StatusOK, api.BatchCounts{Changed: n})
	return nil
}

func (s *Server) releaseItems(w http.ResponseWriter, r *http.Request) error {
	var req api.ReleaseRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := workerNode(r, req.Worker); err != nil {
		return err
	}
	name := r.PathValue("name")
	if req.All {
		if len(req.IDs) > 0 {
			return badRequest{errors.New("ids: give either ids or all, not both")}
		}
		held, err := s.cfg.Store.BatchItems(r.Context(), name, store.ItemLeased, 0)
		if err != nil {
			return err
		}
		for _, it := range held {
			if it.Worker == req.Worker {
				req.IDs = append(req.IDs, it.ID)
			}
		}
		if len(req.IDs) == 0 {
			writeJSON(w, http.StatusOK, api.BatchCounts{})
			return nil
		}
	}
	n, err := s.cfg.Store.ReleaseBatchItems(r.Context(), name, req.Worker, req.IDs)
	if err != nil {
		return err
	}
	s.kick()
	writeJSON(w, http.StatusOK, api.BatchCounts{Changed: n})
	return nil
}

func (s *Server) now() time.Time {
	if s.cfg.Now != nil {
		return s.cfg.Now()
	}
	return time.Now()
}
