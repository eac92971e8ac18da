package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/client"
	"github.com/spotml/spotml/internal/spec"
)

// globals are the flags every client command shares.
type globals struct {
	server string
	data   string
	getenv func(string) string
}

// client builds an API client: server from --server, SPOTML_SERVER or the
// default; token from SPOTML_TOKEN, else --data's token file, else
// ./spotml-data/token.
func (g *globals) client() (*client.Client, error) {
	server := g.server
	if server == "" {
		server = g.getenv("SPOTML_SERVER")
	}
	if server == "" {
		server = "http://127.0.0.1:8080"
	}
	token := g.getenv("SPOTML_TOKEN")
	if token == "" {
		path := filepath.Join(g.data, "token")
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("no API token: set SPOTML_TOKEN or point --data at the directory spotml up uses (%s: %v)", path, err)
		}
		token = strings.TrimSpace(string(b))
	}
	return client.New(server, token), nil
}

func newRoot(ctx context.Context, getenv func(string) string, stdout, stderr io.Writer) *cobra.Command {
	g := &globals{getenv: getenv}
	root := &cobra.Command{
		Use:           "spotml",
		Short:         "Run machine-learning work on spot capacity without giving up reliability",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.server, "server", "", "control plane URL, or its instances' URLs separated by commas (default $SPOTML_SERVER or http://127.0.0.1:8080)")
	root.PersistentFlags().StringVar(&g.data, "data", "./spotml-data", "data directory whose token file the CLI uses when SPOTML_TOKEN is not set")
	up := newUpCmd(stdout, stderr, true)
	srv := newUpCmd(stdout, stderr, false)
	root.AddCommand(up, srv, newAgentCmd(stderr, getenv), newAgentInitCmd(stderr), newGatewayCmd(stdout, stderr), newServeCmd(getenv, stdout, stderr), newBatchWorkerCmd(getenv, stderr),
		newApplyCmd(g, stdout), newGetCmd(g, stdout), newDescribeCmd(g, stdout), newDeleteCmd(g, stdout),
		newLogsCmd(g, stdout), newWaitCmd(g, stdout, stderr), newEvictCmd(g, stdout), newCostCmd(g, stdout), newBlobCmd(g, stdout, stderr), newTokenCmd(g, stdout),
		newBackupCmd(g, stdout, stderr), newRestoreCmd(g, stdout), newPlanCmd(g, stdout))
	return root
}

func newApplyCmd(g *globals, stdout io.Writer) *cobra.Command {
	var files []string
	c := &cobra.Command{
		Use:   "apply -f FILE [-f FILE...]",
		Short: "Create or update pools and submit jobs from YAML files (a directory means its *.yaml files); all or nothing",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return errors.New("-f: name at least one YAML file or directory")
			}
			var req api.ApplyRequest
			for _, f := range files {
				paths := []string{f}
				if fi, err := os.Stat(f); err == nil && fi.IsDir() {
					paths = nil
					for _, ext := range []string{"*.yaml", "*.yml"} {
						m, _ := filepath.Glob(filepath.Join(f, ext))
						paths = append(paths, m...)
					}
					sort.Strings(paths)
					if len(paths) == 0 {
						return fmt.Errorf("-f %s: no *.yaml files in that directory", f)
					}
				}
				for _, p := range paths {
					b, err := os.ReadFile(p)
					if err != nil {
						return fmt.Errorf("-f: %w", err)
					}
					req.Files = append(req.Files, api.File{Name: p, Data: string(b)})
				}
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			var res []api.ApplyResult
			if err := cl.Do(c.Context(), http.MethodPost, api.Prefix+"/apply", req, &res); err != nil {
				return err
			}
			for _, r := range res {
				fmt.Fprintf(stdout, "%s/%s %s\n", strings.ToLower(r.Kind), r.Name, r.Action)
			}
			return nil
		},
	}
	c.Flags().StringArrayVarP(&files, "filename", "f", nil, "YAML file or directory")
	return c
}

// kinds maps what users type to the API collection.
var kinds = map[string]string{
	"pool": "pools", "pools": "pools",
	"node": "nodes", "nodes": "nodes",
	"job": "jobs", "jobs": "jobs",
	"task": "tasks", "tasks": "tasks",
	"event": "events", "events": "events",
	"service": "services", "services": "services", "svc": "services",
	"replica": "replicas", "replicas": "replicas",
	"batchinference": "batchinferences", "batchinferences": "batchinferences", "bi": "batchinferences",
	"controlplane": "controlplane", "cp": "controlplane",
}

func kindOf(arg string) (string, error) {
	k, ok := kinds[strings.ToLower(arg)]
	if !ok {
		return "", fmt.Errorf("unknown kind %q: use pools, nodes, jobs, tasks, services, replicas, batchinferences, events or controlplane", arg)
	}
	return k, nil
}

func newGetCmd(g *globals, stdout io.Writer) *cobra.Command {
	var output string
	var all bool
	c := &cobra.Command{
		Use:   "get KIND [NAME]",
		Short: "List pools, nodes, jobs, tasks (of a job: get tasks JOB), services, replicas (of a service: get replicas SERVICE), events or controlplane (the instances and the leader)",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			kind, err := kindOf(args[0])
			if err != nil {
				return err
			}
			switch output {
			case "", "wide", "json", "yaml", "name":
			default:
				return fmt.Errorf("-o: %q is not json, yaml, name or wide", output)
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			name := ""
			if len(args) == 2 {
				name = args[1]
			}
			return get(c.Context(), cl, stdout, kind, name, output, all)
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "", "json, yaml, name or wide (default: a table)")
	c.Flags().BoolVar(&all, "all", false, "nodes: include ended nodes")
	return c
}

func get(ctx context.Context, cl *client.Client, w io.Writer, kind, name, output string, all bool) error {
	switch kind {
	case "pools":
		var ps []api.Pool
		if err := fetchList(ctx, cl, "pools", name, &ps); err != nil {
			return err
		}
		return print(w, output, ps, func(p api.Pool) string { return p.Spec.Metadata.Name }, "NAME\tPROVIDER\tPRIORITY\tINSTANCE\tMIN\tMAX\tZONES", func(p api.Pool) string {
			s := p.Spec.Spec
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%d\t%d\t%s", p.Spec.Metadata.Name, s.Provider, s.Priority, s.InstanceType, s.Min, s.Max, strings.Join(s.Zones, ","))
		})
	case "nodes":
		path := api.Prefix + "/nodes"
		if all {
			path += "?all=true"
		}
		var ns []api.Node
		if name != "" {
			var n api.Node
			if err := cl.Do(ctx, http.MethodGet, api.Prefix+"/nodes/"+url.PathEscape(name), nil, &n); err != nil {
				return err
			}
			ns = []api.Node{n}
		} else if err := cl.Do(ctx, http.MethodGet, path, nil, &ns); err != nil {
			return err
		}
		// HOST is the platform's machine under a node (a Kubernetes
		// node); local nodes have none.
		return print(w, output, ns, func(n api.Node) string { return n.Name }, "NAME\tPOOL\tPRIORITY\tTYPE\tZONE\tHOST\tPRICE/H\tSTATE\tTASKS\tNOTICE\tAGE", func(n api.Node) string {
			nt := "-"
			if !n.NoticeDeadline.IsZero() {
				nt = "evicted in " + time.Until(n.NoticeDeadline).Round(time.Second).String()
			} else if !n.AtRisk.IsZero() {
				nt = "at risk " + age(n.AtRisk) // replaced, not drained
			}
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t$%.4f\t%s\t%d\t%s\t%s", n.Name, n.Pool, n.Priority, n.InstanceType, dash(n.Zone),
				dash(n.Host), n.PricePerHour, n.State, n.Tasks, nt, age(n.CreatedAt))
		})
	case "jobs":
		var js []api.Job
		if err := fetchList(ctx, cl, "jobs", name, &js); err != nil {
			return err
		}
		// EVICTIONS are preemptions (no retry spent), RETRIES failed
		// attempts; the deadline columns are dashes for a job without one.
		return print(w, output, js, func(j api.Job) string { return j.Spec.Metadata.Name },
			"NAME\tSTATE\tSUCCEEDED\tRUNNING\tPENDING\tFAILED\tEVICTIONS\tRETRIES\tDEADLINE\tPROGRESS\tMODE\tSPOT-H\tOD-H\tCOST\tAGE", func(j api.Job) string {
				return fmt.Sprintf("%s\t%s\t%d/%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s", j.Spec.Metadata.Name, j.State, j.Counts[api.TaskSucceeded], total(j),
					j.Counts[api.TaskRunning], j.Counts[api.TaskPending], j.Counts[api.TaskFailed], j.Evictions, j.Failures, deadlineColumns(j), age(j.SubmittedAt))
			})
	case "tasks":
		if name == "" {
			return errors.New("get tasks JOB: name the job whose tasks to list")
		}
		var j api.Job
		if err := cl.Do(ctx, http.MethodGet, api.Prefix+"/jobs/"+url.PathEscape(name), nil, &j); err != nil {
			return err
		}
		return print(w, output, j.Tasks, func(t api.Task) string { return t.Job + "/" + t.Name }, "NAME\tSTATE\tATTEMPT\tFAILURES\tEVICTIONS\tNODE\tPROGRESS\tEXIT\tMESSAGE", func(t api.Task) string {
			progress := "-"
			if t.Progress != nil {
				progress = fmt.Sprintf("%.0f%%", 100**t.Progress)
				if t.ProgressMessage != "" {
					progress += " " + t.ProgressMessage
				}
			}
			return fmt.Sprintf("%s\t%s\t%d\t%d/%d\t%d\t%s\t%s\t%d\t%s", t.Name, t.State, t.Attempt, t.Failures, t.MaxRetries, t.Evictions, dash(t.Node), progress, t.ExitCode, t.Message)
		})
	case "batchinferences":
		return getBatches(ctx, cl, w, name, output)
	case "services":
		var ss []api.Service
		if err := fetchList(ctx, cl, "services", name, &ss); err != nil {
			return err
		}
		return print(w, output, ss, func(s api.Service) string { return s.Name },
			"NAME\tVERSION\tMODEL\tREADY\tSPOT\tON-DEMAND\tDESIRED\tQPS\tAGE", func(s api.Service) string {
				ready := s.Ready[spec.PrioritySpot] + s.Ready[spec.PriorityOnDemand]
				return fmt.Sprintf("%s\t%d\t%s\t%d/%d\t%d\t%d\t%d\t%.1f\t%s", s.Name, s.Generation, s.Model, ready, len(s.Replicas),
					s.Ready[spec.PrioritySpot], s.Ready[spec.PriorityOnDemand], s.Desired, s.QPS, age(s.CreatedAt))
			})
	case "replicas":
		path := api.Prefix + "/replicas"
		if name != "" {
			path += "?service=" + url.QueryEscape(name)
		}
		var rs []api.Replica
		if err := cl.Do(ctx, http.MethodGet, path, nil, &rs); err != nil {
			return err
		}
		return print(w, output, rs, func(r api.Replica) string { return r.Name },
			"NAME\tVERSION\tSTATE\tPRIORITY\tPOOL\tNODE\tADDR\tNOTICE\tAGE", func(r api.Replica) string {
				pr := r.Priority
				if r.StandIn {
					pr += " (stand-in)"
				}
				nt := "-"
				if r.Noticed {
					nt = "yes"
				}
				return fmt.Sprintf("%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s", r.Name, r.Version, r.State, pr, r.Pool, dash(r.Node), dash(r.Addr), nt, age(r.CreatedAt))
			})
	case "controlplane":
		var cp api.ControlPlane
		if err := cl.Do(ctx, http.MethodGet, api.Prefix+"/controlplane", nil, &cp); err != nil {
			return err
		}
		if output == "json" || output == "yaml" {
			return printObject(w, output, cp)
		}
		return print(w, output, cp.Instances, func(in api.CPInstance) string { return in.ID }, "INSTANCE	ROLE	TERM	ADDRESS	VERSION	STARTED	LAST SEEN", func(in api.CPInstance) string {
			role, term := "follower", "-"
			if in.Leader {
				role, term = "leader", fmt.Sprint(cp.Term)
			}
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s ago", in.ID, role, term, in.Address, in.Version, age(in.Started),
				time.Since(in.LastSeen).Round(100*time.Millisecond))
		})
	case "events":
		q := url.Values{}
		if name != "" {
			q.Set("object", name)
		}
		var es []api.Event
		if err := cl.Do(ctx, http.MethodGet, api.Prefix+"/events?"+q.Encode(), nil, &es); err != nil {
			return err
		}
		return print(w, output, es, func(e api.Event) string { return fmt.Sprint(e.ID) }, "TIME\tKIND\tOBJECT\tREASON\tMESSAGE", func(e api.Event) string {
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%s", e.Time.Local().Format("15:04:05.000"), e.Kind, e.Object, e.Reason, e.Message)
		})
	}
	return fmt.Errorf("unknown kind %q", kind)
}

func fetchList[T any](ctx context.Context, cl *client.Client, coll, name string, out *[]T) error {
	if name == "" {
		return cl.Do(ctx, http.MethodGet, api.Prefix+"/"+coll, nil, out)
	}
	var one T
	if err := cl.Do(ctx, http.MethodGet, api.Prefix+"/"+coll+"/"+url.PathEscape(name), nil, &one); err != nil {
		return err
	}
	*out = []T{one}
	return nil
}

// printObject writes one object as json or yaml.
func printObject(w io.Writer, output string, v any) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	b, err := json.Marshal(v) // through JSON: the API's field names
	if err != nil {
		return err
	}
	var m any
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	return yaml.NewEncoder(w).Encode(m)
}

func print[T any](w io.Writer, output string, items []T, name func(T) string, header string, row func(T) string) error {
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(items)
	case "yaml":
		// Through JSON so that the field names are the API's.
		b, err := json.Marshal(items)
		if err != nil {
			return err
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			return err
		}
		return yaml.NewEncoder(w).Encode(v)
	case "name":
		for _, it := range items {
			fmt.Fprintln(w, name(it))
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, it := range items {
		fmt.Fprintln(tw, row(it))
	}
	return tw.Flush()
}

// deadlineColumns are get jobs' DEADLINE, PROGRESS, MODE, SPOT-H, OD-H
// and COST: time left (or how early or late it finished), progress
// against where a job on schedule would be, where it runs, and spent →
// projected against all on-demand.
func deadlineColumns(j api.Job) string {
	d := j.Deadline
	if d == nil {
		return "-\t-\t-\t-\t-\t-"
	}
	left := time.Until(d.Deadline).Round(time.Second).String() + " left"
	switch {
	case j.State != api.JobRunning && !j.FinishedAt.After(d.Deadline):
		left = "met by " + d.Deadline.Sub(j.FinishedAt).Round(time.Second).String()
	case j.State != api.JobRunning:
		left = "missed by " + j.FinishedAt.Sub(d.Deadline).Round(time.Second).String()
	case time.Until(d.Deadline) < 0:
		left = "late " + (-time.Until(d.Deadline)).Round(time.Second).String()
	}
	progress := "-"
	if d.Work.Duration > 0 {
		progress = fmt.Sprintf("%.0f%% (plan %.0f%%)", 100*d.Done.Seconds()/d.Work.Seconds(), 100*d.Expected.Seconds()/d.Work.Seconds())
	}
	var spot, od, spent float64
	if c := j.Cost; c != nil {
		spot, od, spent = c.SpotHours, c.OnDemandHours, c.Spent
	}
	return fmt.Sprintf("%s\t%s\t%s\t%.2f\t%.2f\t$%.4f→$%.4f/$%.4f", left, progress, d.Mode, spot, od, spent, d.Projected, d.AllOnDemand)
}

func total(j api.Job) int {
	n := 0
	for _, c := range j.Counts {
		n += c
	}
	return n
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	default:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
}

func newDescribeCmd(g *globals, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "describe KIND NAME",
		Short: "Show one pool, node, job or service in full, with its recent events",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			kind, err := kindOf(args[0])
			if err != nil {
				return err
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			singular := strings.TrimSuffix(kind, "s")
			if err := get(c.Context(), cl, stdout, kind, args[1], "yaml", false); err != nil {
				return err
			}
			// The server picks the object's own events (a job's with its
			// tasks', a service's with its replicas'), however many newer
			// ones other objects have.
			var es []api.Event
			q := url.Values{"of": {singular + "/" + args[1]}, "limit": {"50"}}
			if err := cl.Do(c.Context(), http.MethodGet, api.Prefix+"/events?"+q.Encode(), nil, &es); err != nil {
				return err
			}
			fmt.Fprintln(stdout, "events:")
			for _, e := range es {
				fmt.Fprintf(stdout, "  %s  %-10s %-28s %s %s\n", e.Time.Local().Format("15:04:05"), e.Kind, e.Object, e.Reason, e.Message)
			}
			return nil
		},
	}
}

func newDeleteCmd(g *globals, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "delete KIND NAME",
		Short: "Delete a pool (its nodes are removed), a job (its tasks are stopped) or a service (its replicas are drained)",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			kind, err := kindOf(args[0])
			if err != nil {
				return err
			}
			if kind != "pools" && kind != "jobs" && kind != "services" && kind != "batchinferences" {
				return fmt.Errorf("delete %s: only pools, jobs, services and batchinferences can be deleted", args[0])
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), http.MethodDelete, api.Prefix+"/"+kind+"/"+url.PathEscape(args[1]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s/%s deleted\n", strings.TrimSuffix(kind, "s"), args[1])
			return nil
		},
	}
}

func newLogsCmd(g *globals, stdout io.Writer) *cobra.Command {
	var stderrFlag bool
	var attempt int
	c := &cobra.Command{
		Use:   "logs JOB/TASK",
		Short: "Print a task's stdout (or --stderr), every attempt in order",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			job, task, ok := strings.Cut(args[0], "/")
			if !ok || job == "" || task == "" {
				return fmt.Errorf("logs %s: write JOB/TASK, e.g. fashion-mnist/train, or batchinference/NAME for a BatchInference's failed items", args[0])
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			if job == "batchinference" {
				return batchLogs(c.Context(), cl, stdout, task)
			}
			q := url.Values{"stream": {"stdout"}}
			if stderrFlag {
				q.Set("stream", "stderr")
			}
			if attempt > 0 {
				q.Set("attempt", fmt.Sprint(attempt))
			}
			var b []byte
			if err := cl.Do(c.Context(), http.MethodGet, api.Prefix+"/jobs/"+url.PathEscape(job)+"/tasks/"+url.PathEscape(task)+"/logs?"+q.Encode(), nil, &b); err != nil {
				return err
			}
			_, err = stdout.Write(b)
			return err
		},
	}
	c.Flags().BoolVar(&stderrFlag, "stderr", false, "print stderr instead of stdout")
	c.Flags().IntVar(&attempt, "attempt", 0, "only this attempt")
	return c
}

func newEvictCmd(g *globals, stdout io.Writer) *cobra.Command {
	var noticeFor time.Duration
	c := &cobra.Command{
		Use:   "evict NODE [NODE...]",
		Short: "Evict nodes of the local provider as the spot market would: a notice, then the node is gone",
		Long: "Evict nodes of the local provider as the spot market would: a notice, then the node is gone.\n" +
			"Several nodes are given their notices at the same instant, as a bulk reclaim takes them.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			req := api.EvictRequest{}
			if noticeFor > 0 {
				req.Notice = noticeFor.String()
			}
			// All at once: a cloud reclaims capacity in bulk, and one
			// request after another would spread the notices out.
			nodes := make([]api.Node, len(args))
			errs := make([]error, len(args))
			var wg sync.WaitGroup
			for i, name := range args {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = cl.Do(c.Context(), http.MethodPost, api.Prefix+"/nodes/"+url.PathEscape(name)+"/evict", req, &nodes[i])
				}()
			}
			wg.Wait()
			for i, n := range nodes {
				if errs[i] != nil {
					continue
				}
				fmt.Fprintf(stdout, "node/%s notice given: evicted at %s (in %s)\n", n.Name, n.NoticeDeadline.Local().Format("15:04:05"),
					time.Until(n.NoticeDeadline).Round(time.Second))
			}
			return errors.Join(errs...)
		},
	}
	c.Flags().DurationVar(&noticeFor, "notice", 0, "notice before the node is taken (default: the pool's notice)")
	return c
}

func newCostCmd(g *globals, stdout io.Writer) *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "cost",
		Short: "What the nodes cost so far, against the same node-time on demand",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			var s api.Cost
			if err := cl.Do(c.Context(), http.MethodGet, api.Prefix+"/cost", nil, &s); err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(s)
			}
			printCost(stdout, s)
			return nil
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "", "json (default: a table)")
	return c
}

func printCost(w io.Writer, s api.Cost) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "POOL\tPRIORITY\tNODE-HOURS\tSPENT\tON-DEMAND\tSAVING\t")
	for _, l := range s.Lines {
		fmt.Fprintf(tw, "%s\t%s\t%.3f\t$%.4f\t$%.4f\t%s\t\n", l.Pool, l.Priority, l.NodeSeconds/3600, l.Spent, l.OnDemand, pct(l.OnDemand-l.Spent, l.OnDemand))
	}
	fmt.Fprintf(tw, "TOTAL\t\t%.3f\t$%.4f\t$%.4f\t%s\t\n", s.NodeSeconds/3600, s.Spent, s.OnDemand, pct(s.Saving, s.OnDemand))
	tw.Flush()
}

func pct(saving, base float64) string {
	if base == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*saving/base)
}
