package server

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/plan"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/trace"
)

// planTraces lists the traces under Config.TracesDir, by their names
// relative to it (what POST /plan takes), then the spot pools' own
// histories as pool/NAME.
func (s *Server) planTraces(w http.ResponseWriter, r *http.Request) error {
	names := []string{}
	if dir := s.cfg.TracesDir; dir != "" {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			switch strings.ToLower(filepath.Ext(path)) {
			case ".json", ".csv", ".txt":
				rel, err := filepath.Rel(dir, path)
				if err == nil {
					names = append(names, filepath.ToSlash(rel))
				}
			}
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	slices.Sort(names)
	pools, err := s.cfg.Store.ListPools(r.Context())
	if err != nil {
		return err
	}
	for _, p := range pools {
		if p.Spec.Spec.Priority == spec.PrioritySpot {
			names = append(names, "pool/"+p.Spec.Metadata.Name)
		}
	}
	writeJSON(w, http.StatusOK, api.PlanTraces{Dir: s.cfg.TracesDir, Traces: names})
	return nil
}

// plan simulates a service on traces (plan.Services): the same placement
// and spare sizing as the control plane, nothing launched or stored.
func (s *Server) plan(w http.ResponseWriter, r *http.Request) error {
	var req api.PlanRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	docs, err := spec.Parse([]byte(req.Spec))
	if err != nil {
		return badRequest{fmt.Errorf("spec: %w", err)}
	}
	var pr plan.Request
	found := false
	for _, d := range docs {
		switch {
		case d.Service != nil && !found:
			pr.Service, found = *d.Service, true
		case d.Pool != nil:
			pr.Pools = append(pr.Pools, *d.Pool)
		}
	}
	if !found {
		return badRequest{errors.New("spec: no Service in it; paste a kind: Service document (and, if you like, its Pools)")}
	}
	durations := []struct {
		field string
		from  string
		to    *time.Duration
	}{{"start", req.Start, &pr.Start}, {"duration", req.Duration, &pr.Duration}, {"boot", cmp.Or(req.Boot, "1m"), &pr.Boot},
		{"load", cmp.Or(req.Load, "5s"), &pr.Load}, {"notice", cmp.Or(req.Notice, "30s"), &pr.Notice}}
	pr.Start = -1
	for _, d := range durations {
		if d.from == "" {
			continue
		}
		v, err := time.ParseDuration(d.from)
		if err != nil || v < 0 {
			return badRequest{fmt.Errorf("%s: %q is not a duration such as 90s or 12h", d.field, d.from)}
		}
		*d.to = v
	}
	if req.Offsets > 500 {
		return badRequest{fmt.Errorf("offsets: %d is more than 500; ask for fewer", req.Offsets)}
	}
	pr.Traces, pr.InstanceType, pr.Speedup, pr.Offsets, pr.QPS, pr.Target = req.Traces, req.InstanceType, req.Speedup, req.Offsets, req.QPS, req.Target
	// A trace named pool/NAME is that pool's own recorded history.
	load := func(name string) (*trace.Trace, error) {
		if pool, ok := strings.CutPrefix(name, "pool/"); ok {
			b, err := s.historyTrace(r.Context(), pool, 0, 0)
			if err != nil {
				return nil, err
			}
			return trace.Parse(b)
		}
		return s.loadTrace(name)
	}
	rep, err := plan.Services(pr, load)
	if err != nil {
		return badRequest{err}
	}
	writeJSON(w, http.StatusOK, rep)
	return nil
}

// loadTrace reads a trace from Config.TracesDir only (a pool's market
// trace may name it with that directory in front, as apply reads it):
// a viewer may plan, but not read the server's other files.
func (s *Server) loadTrace(name string) (*trace.Trace, error) {
	dir := s.cfg.TracesDir
	if dir == "" {
		return nil, errors.New("this control plane has no traces directory (spotml up --traces-dir)")
	}
	if rel, err := filepath.Rel(dir, name); err == nil && filepath.IsLocal(rel) {
		name = rel
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("traces directory: %w", err)
	}
	defer root.Close()
	f, err := root.Open(filepath.FromSlash(name))
	if err != nil {
		return nil, fmt.Errorf("not a trace under %s (GET %s/plan/traces lists them)", dir, api.Prefix)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<20))
	if err != nil {
		return nil, err
	}
	return trace.Parse(b)
}
