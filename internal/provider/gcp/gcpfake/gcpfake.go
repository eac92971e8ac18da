// Package gcpfake is a Compute Engine stand-in: an http.Handler that
// speaks the Compute Engine REST API (v1) for the calls spotml's gcp
// provider makes, through the official Go client pointed at it with
// option.WithEndpoint and option.WithoutAuthentication:
//
//   - instances: insert (with requestId idempotence), get, list (the
//     labels filter, pages), delete, stop, start, setMetadata (with its
//     fingerprint check), simulateMaintenanceEvent;
//   - zoneOperations: get and wait.
//
// Bodies are the API's JSON (the computepb messages in protojson, as the
// client reads them); errors are googleapi error documents with a reason
// ("notFound", "alreadyExists", "conditionNotMet", "invalid",
// "quotaExceeded"). As Compute Engine does, an insert or start refused for
// capacity is accepted and its operation ends in error
// (ZONE_RESOURCE_POOL_EXHAUSTED, QUOTA_EXCEEDED) with httpErrorStatusCode.
//
// Preemption: Google documents instances.simulateMaintenanceEvent as the
// way to test a Spot VM's preemption, and so does the fake: a Spot VM
// gets its notice (OnNotice: instance/preempted turns TRUE), and after
// NoticeFor its instanceTerminationAction (DELETE or STOP) is carried out
// and a compute.instances.preempted operation recorded. Preempt does the
// same from a test, as the platform does on its own.
package gcpfake

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/compute/apiv1/computepb"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

const base = "https://www.googleapis.com/compute/v1/"

// Cloud is the fake Compute Engine.
type Cloud struct {
	// NoticeFor is how long a preempted Spot VM runs after its notice;
	// default 30s, as Compute Engine gives.
	NoticeFor time.Duration
	// OnBoot is called when a VM starts running (inserted or started);
	// OnEnd when it stops running (deleted, stopped, preempted); OnNotice
	// when its preemption notice begins. They are called without the
	// fake's lock held, and may call it.
	OnBoot, OnEnd, OnNotice func(Instance)

	mu        sync.Mutex
	now       func() time.Time
	seq       int
	instances map[string]*computepb.Instance // project/zone/name
	ops       map[string]*computepb.Operation
	requests  map[string]string // requestId → operation key
	refuse    map[string]string // zone/model → error code
	calls     []string
}

// New returns an empty fake.
func New() *Cloud {
	return &Cloud{NoticeFor: 30 * time.Second, now: time.Now, instances: map[string]*computepb.Instance{},
		ops: map[string]*computepb.Operation{}, requests: map[string]string{}, refuse: map[string]string{}}
}

// Instance is a snapshot of one VM.
type Instance struct{ pb *computepb.Instance }

// Name is the VM's name.
func (i Instance) Name() string { return i.pb.GetName() }

// Zone is the VM's zone's name.
func (i Instance) Zone() string { return last(i.pb.GetZone()) }

// Status is the VM's status (RUNNING, TERMINATED, …).
func (i Instance) Status() string { return i.pb.GetStatus() }

// Proto is a copy of the VM as the API returns it.
func (i Instance) Proto() *computepb.Instance { return proto.Clone(i.pb).(*computepb.Instance) }

// Metadata is one of the VM's metadata values.
func (i Instance) Metadata(key string) (string, bool) {
	for _, it := range i.pb.GetMetadata().GetItems() {
		if it.GetKey() == key {
			return it.GetValue(), true
		}
	}
	return "", false
}

// Refuse makes inserts and starts of VMs of provisioning model (SPOT or
// STANDARD; "" for both) in zone fail with code: ZONE_RESOURCE_POOL_EXHAUSTED
// or QUOTA_EXCEEDED in the operation, as Compute Engine reports them, or
// quotaExceeded as a synchronous 403. An empty code lifts the refusal.
func (c *Cloud) Refuse(zone, model, code string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if code == "" {
		delete(c.refuse, zone+"/"+model)
		return
	}
	c.refuse[zone+"/"+model] = code
}

// Instance returns a VM.
func (c *Cloud) Instance(project, zone, name string) (Instance, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	in, ok := c.instances[project+"/"+zone+"/"+name]
	if !ok {
		return Instance{}, false
	}
	return Instance{proto.Clone(in).(*computepb.Instance)}, true
}

// Instances returns every VM, by name.
func (c *Cloud) Instances() []Instance {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Instance
	for _, in := range c.instances {
		out = append(out, Instance{proto.Clone(in).(*computepb.Instance)})
	}
	slices.SortFunc(out, func(a, b Instance) int { return strings.Compare(a.Name(), b.Name()) })
	return out
}

// Calls returns the API calls served so far ("POST insert zone", …) and
// forgets them.
func (c *Cloud) Calls() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.calls
	c.calls = nil
	return out
}

// Preempt preempts a Spot VM as Compute Engine does on its own.
func (c *Cloud) Preempt(project, zone, name string) error {
	c.mu.Lock()
	in, ok := c.instances[project+"/"+zone+"/"+name]
	if !ok || in.GetScheduling().GetProvisioningModel() != "SPOT" {
		c.mu.Unlock()
		return fmt.Errorf("no Spot VM %s in %s", name, zone)
	}
	c.mu.Unlock()
	c.preempt(project, zone, name)
	return nil
}

func (c *Cloud) preempt(project, zone, name string) {
	c.mu.Lock()
	in, ok := c.instances[project+"/"+zone+"/"+name]
	if !ok || in.GetStatus() != "RUNNING" {
		c.mu.Unlock()
		return
	}
	snap := Instance{proto.Clone(in).(*computepb.Instance)}
	notice := c.NoticeFor
	c.mu.Unlock()
	if c.OnNotice != nil {
		c.OnNotice(snap)
	}
	time.AfterFunc(notice, func() {
		c.mu.Lock()
		in, ok := c.instances[project+"/"+zone+"/"+name]
		if !ok || in.GetStatus() != "RUNNING" {
			c.mu.Unlock()
			return
		}
		if in.GetScheduling().GetInstanceTerminationAction() == "DELETE" {
			delete(c.instances, project+"/"+zone+"/"+name)
		} else {
			in.Status = ptr("TERMINATED")
		}
		op := c.newOp(project, zone, "compute.instances.preempted", in)
		op.Status = computepb.Operation_DONE.Enum()
		snap := Instance{proto.Clone(in).(*computepb.Instance)}
		c.mu.Unlock()
		if c.OnEnd != nil {
			c.OnEnd(snap)
		}
	})
}

// ServeHTTP serves the Compute Engine REST API.
func (c *Cloud) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m := route.FindStringSubmatch(r.URL.Path)
	if m == nil {
		writeError(w, http.StatusNotFound, "notFound", "The requested URL "+r.URL.Path+" was not found on this server.")
		return
	}
	project, zone, kind, name, verb := m[1], m[2], m[3], m[4], m[5]
	c.mu.Lock()
	c.calls = append(c.calls, strings.TrimSpace(r.Method+" "+kind+" "+verb+" "+name))
	c.mu.Unlock()
	switch {
	case kind == "operations" && name != "" && (r.Method == http.MethodGet && verb == "" || r.Method == http.MethodPost && verb == "wait"):
		c.getOp(w, project, zone, name)
	case kind == "instances" && name == "" && r.Method == http.MethodPost:
		c.insert(w, r, project, zone)
	case kind == "instances" && name == "" && r.Method == http.MethodGet:
		c.list(w, r, project, zone)
	case kind == "instances" && verb == "" && r.Method == http.MethodGet:
		c.get(w, project, zone, name)
	case kind == "instances" && verb == "" && r.Method == http.MethodDelete:
		c.change(w, r, project, zone, name, "delete", c.doDelete)
	case kind == "instances" && verb == "stop" && r.Method == http.MethodPost:
		c.change(w, r, project, zone, name, "stop", c.doStop)
	case kind == "instances" && verb == "start" && r.Method == http.MethodPost:
		c.change(w, r, project, zone, name, "start", c.doStart)
	case kind == "instances" && verb == "setMetadata" && r.Method == http.MethodPost:
		c.setMetadata(w, r, project, zone, name)
	case kind == "instances" && verb == "simulateMaintenanceEvent" && r.Method == http.MethodPost:
		c.change(w, r, project, zone, name, "simulateMaintenanceEvent", c.doMaintenance)
	default:
		writeError(w, http.StatusNotFound, "notFound", "The requested URL "+r.URL.Path+" was not found on this server.")
	}
}

var (
	route     = regexp.MustCompile(`^/compute/v1/projects/([^/]+)/zones/([^/]+)/(instances|operations)(?:/([^/]+))?(?:/([A-Za-z]+))?$`)
	nameRe    = regexp.MustCompile(`^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$`)
	uuidRe    = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	labelKey  = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)
	labelVal  = regexp.MustCompile(`^[a-z0-9_-]{0,63}$`)
	hasLabel  = regexp.MustCompile(`^labels\.([a-z][a-z0-9_-]*):\*$`)
	isLabel   = regexp.MustCompile(`^labels\.([a-z][a-z0-9_-]*)\s*=\s*"([^"]*)"$`)
	machineRe = regexp.MustCompile(`^(?:.*/)?zones/([^/]+)/machineTypes/([a-z][-a-z0-9]*)$`)
)

func resource(project, zone, name string) string {
	return "projects/" + project + "/zones/" + zone + "/instances/" + name
}

func (c *Cloud) insert(w http.ResponseWriter, r *http.Request, project, zone string) {
	body, _ := io.ReadAll(r.Body)
	in := &computepb.Instance{}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(body, in); err != nil {
		writeError(w, http.StatusBadRequest, "parseError", "Invalid JSON payload received. "+err.Error())
		return
	}
	rid := r.URL.Query().Get("requestId")
	if msg := invalid(in, zone, rid); msg != "" {
		writeError(w, http.StatusBadRequest, "invalid", msg)
		return
	}
	c.mu.Lock()
	if key, ok := c.requests[rid]; ok && rid != "" {
		// The same request again: the same operation.
		op := c.ops[key]
		c.mu.Unlock()
		writeProto(w, op)
		return
	}
	key := project + "/" + zone + "/" + in.GetName()
	if _, ok := c.instances[key]; ok {
		c.mu.Unlock()
		writeError(w, http.StatusConflict, "alreadyExists", "The resource '"+resource(project, zone, in.GetName())+"' already exists")
		return
	}
	model := in.GetScheduling().GetProvisioningModel()
	if model == "" {
		model = "STANDARD"
	}
	code := c.refusal(zone, model)
	if code == "quotaExceeded" {
		c.mu.Unlock()
		writeError(w, http.StatusForbidden, "quotaExceeded", "Quota 'PREEMPTIBLE_CPUS' exceeded.  Limit: 0.0 in region "+zone[:strings.LastIndex(zone, "-")]+".")
		return
	}
	op := c.newOp(project, zone, "insert", &computepb.Instance{Name: in.Name})
	if rid != "" {
		c.requests[rid] = opKey(project, zone, op.GetName())
	}
	if code != "" {
		// Accepted, then refused: the operation ends in error.
		fail(op, code, zone)
		c.mu.Unlock()
		writeProto(w, op)
		return
	}
	c.seq++
	in.Id = ptr(uint64(1000 + c.seq))
	in.Kind = ptr("compute#instance")
	in.Zone = ptr(base + "projects/" + project + "/zones/" + zone)
	in.SelfLink = ptr(base + resource(project, zone, in.GetName()))
	in.MachineType = ptr(base + "projects/" + project + "/zones/" + zone + "/machineTypes/" + last(in.GetMachineType()))
	in.CreationTimestamp = ptr(c.now().Format(time.RFC3339))
	in.Status = ptr("RUNNING")
	if in.Scheduling == nil {
		in.Scheduling = &computepb.Scheduling{}
	}
	if in.Scheduling.ProvisioningModel == nil {
		in.Scheduling.ProvisioningModel = ptr("STANDARD")
	}
	if model == "SPOT" && in.Scheduling.InstanceTerminationAction == nil {
		in.Scheduling.InstanceTerminationAction = ptr("STOP") // Compute Engine's default
	}
	if in.Metadata == nil {
		in.Metadata = &computepb.Metadata{}
	}
	in.Metadata.Kind = ptr("compute#metadata")
	c.fingerprint(in)
	c.instances[key] = in
	snap := Instance{proto.Clone(in).(*computepb.Instance)}
	c.mu.Unlock()
	writeProto(w, op)
	if c.OnBoot != nil {
		c.OnBoot(snap)
	}
}

// invalid checks an insert as Compute Engine does, for what the provider
// sends; it returns the error message, empty if valid.
func invalid(in *computepb.Instance, zone, rid string) string {
	if rid != "" && !uuidRe.MatchString(rid) {
		return "Invalid value for field 'requestId': '" + rid + "'. The requestId must be a valid UUID."
	}
	if !nameRe.MatchString(in.GetName()) {
		return "Invalid value for field 'resource.name': '" + in.GetName() + "'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'"
	}
	mt := machineRe.FindStringSubmatch(in.GetMachineType())
	if mt == nil {
		return "Invalid value for field 'resource.machineType': '" + in.GetMachineType() + "'. Invalid machine type."
	}
	if mt[1] != zone {
		return "Invalid value for field 'resource.machineType': '" + in.GetMachineType() + "'. Machine type must be in zone " + zone + "."
	}
	boots := 0
	for _, d := range in.GetDisks() {
		if d.GetBoot() {
			boots++
			if d.GetInitializeParams().GetSourceImage() == "" {
				return "Invalid value for field 'resource.disks[0].initializeParams.sourceImage': ''. A boot disk needs a source image."
			}
		}
	}
	if boots != 1 {
		return "Invalid value for field 'resource.disks': an instance needs exactly one boot disk."
	}
	if len(in.GetNetworkInterfaces()) == 0 {
		return "Invalid value for field 'resource.networkInterfaces': at least one network interface is required."
	}
	for k, v := range in.GetLabels() {
		if !labelKey.MatchString(k) || !labelVal.MatchString(v) {
			return fmt.Sprintf("Invalid value for field 'resource.labels': %q=%q.", k, v)
		}
	}
	s := in.GetScheduling()
	switch s.GetProvisioningModel() {
	case "", "STANDARD":
		if s.InstanceTerminationAction != nil {
			return "Invalid value for field 'resource.scheduling.instanceTerminationAction': only Spot VMs take a termination action."
		}
	case "SPOT":
		if s.GetAutomaticRestart() {
			return "Invalid value for field 'resource.scheduling.automaticRestart': 'true'. Spot VMs cannot restart automatically."
		}
		if s.GetOnHostMaintenance() != "TERMINATE" {
			return "Invalid value for field 'resource.scheduling.onHostMaintenance': '" + s.GetOnHostMaintenance() + "'. Spot VMs must terminate on host maintenance."
		}
		switch a := s.GetInstanceTerminationAction(); a {
		case "", "DELETE", "STOP":
		default:
			return "Invalid value for field 'resource.scheduling.instanceTerminationAction': '" + a + "'."
		}
	default:
		return "Invalid value for field 'resource.scheduling.provisioningModel': '" + s.GetProvisioningModel() + "'."
	}
	if len(in.GetGuestAccelerators()) > 0 && s.GetOnHostMaintenance() != "TERMINATE" {
		return "Instances with guest accelerators do not support live migration."
	}
	return ""
}

func (c *Cloud) refusal(zone, model string) string {
	if code, ok := c.refuse[zone+"/"+model]; ok {
		return code
	}
	return c.refuse[zone+"/"]
}

func fail(op *computepb.Operation, code, zone string) {
	msg, status, text := "The zone 'projects/"+projectOf(op)+"/zones/"+zone+"' does not have enough resources available to fulfill the request.  Try a different zone, or try again later.", int32(503), "SERVICE UNAVAILABLE"
	if strings.HasPrefix(code, "QUOTA") {
		msg, status, text = "Quota 'PREEMPTIBLE_CPUS' exceeded.  Limit: 0.0 in region "+zone[:strings.LastIndex(zone, "-")]+".", 403, "FORBIDDEN"
	}
	op.Error = &computepb.Error{Errors: []*computepb.Errors{{Code: &code, Message: &msg}}}
	op.HttpErrorStatusCode, op.HttpErrorMessage = &status, &text
}

func projectOf(op *computepb.Operation) string {
	p := strings.TrimPrefix(op.GetSelfLink(), base+"projects/")
	return p[:strings.Index(p, "/")]
}

// change runs one of the calls that change a VM and answer an operation.
func (c *Cloud) change(w http.ResponseWriter, r *http.Request, project, zone, name, verb string, do func(op *computepb.Operation, in *computepb.Instance, project, zone string) func()) {
	rid := r.URL.Query().Get("requestId")
	if rid != "" && !uuidRe.MatchString(rid) {
		writeError(w, http.StatusBadRequest, "invalid", "Invalid value for field 'requestId': '"+rid+"'. The requestId must be a valid UUID.")
		return
	}
	c.mu.Lock()
	if key, ok := c.requests[rid]; ok && rid != "" {
		op := c.ops[key]
		c.mu.Unlock()
		writeProto(w, op)
		return
	}
	in, ok := c.instances[project+"/"+zone+"/"+name]
	if !ok {
		c.mu.Unlock()
		writeError(w, http.StatusNotFound, "notFound", "The resource '"+resource(project, zone, name)+"' was not found")
		return
	}
	op := c.newOp(project, zone, verb, in)
	if rid != "" {
		c.requests[rid] = opKey(project, zone, op.GetName())
	}
	after := do(op, in, project, zone)
	c.mu.Unlock()
	writeProto(w, op)
	if after != nil {
		after()
	}
}

func (c *Cloud) ended(in *computepb.Instance) func() {
	snap := Instance{proto.Clone(in).(*computepb.Instance)}
	return func() {
		if c.OnEnd != nil {
			c.OnEnd(snap)
		}
	}
}

func (c *Cloud) doDelete(_ *computepb.Operation, in *computepb.Instance, project, zone string) func() {
	delete(c.instances, project+"/"+zone+"/"+in.GetName())
	if in.GetStatus() == "TERMINATED" {
		return nil
	}
	return c.ended(in)
}

func (c *Cloud) doStop(_ *computepb.Operation, in *computepb.Instance, _, _ string) func() {
	if in.GetStatus() == "TERMINATED" {
		return nil
	}
	in.Status = ptr("TERMINATED")
	return c.ended(in)
}

func (c *Cloud) doStart(op *computepb.Operation, in *computepb.Instance, _, zone string) func() {
	if in.GetStatus() != "TERMINATED" {
		return nil
	}
	if code := c.refusal(zone, in.GetScheduling().GetProvisioningModel()); code != "" {
		if code == "quotaExceeded" {
			code = "QUOTA_EXCEEDED"
		}
		fail(op, code, zone)
		return nil
	}
	in.Status = ptr("RUNNING")
	snap := Instance{proto.Clone(in).(*computepb.Instance)}
	return func() {
		if c.OnBoot != nil {
			c.OnBoot(snap)
		}
	}
}

func (c *Cloud) doMaintenance(_ *computepb.Operation, in *computepb.Instance, project, zone string) func() {
	if in.GetScheduling().GetProvisioningModel() != "SPOT" || in.GetStatus() != "RUNNING" {
		return nil // a standard VM live-migrates: nothing the guest sees here
	}
	name := in.GetName()
	return func() { c.preempt(project, zone, name) }
}

func (c *Cloud) setMetadata(w http.ResponseWriter, r *http.Request, project, zone, name string) {
	body, _ := io.ReadAll(r.Body)
	md := &computepb.Metadata{}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(body, md); err != nil {
		writeError(w, http.StatusBadRequest, "parseError", "Invalid JSON payload received. "+err.Error())
		return
	}
	c.mu.Lock()
	in, ok := c.instances[project+"/"+zone+"/"+name]
	if !ok {
		c.mu.Unlock()
		writeError(w, http.StatusNotFound, "notFound", "The resource '"+resource(project, zone, name)+"' was not found")
		return
	}
	if md.GetFingerprint() != in.GetMetadata().GetFingerprint() {
		c.mu.Unlock()
		writeError(w, http.StatusPreconditionFailed, "conditionNotMet", "Supplied fingerprint does not match current metadata fingerprint.")
		return
	}
	in.Metadata.Items = md.Items
	c.fingerprint(in)
	op := c.newOp(project, zone, "setMetadata", in)
	c.mu.Unlock()
	writeProto(w, op)
}

func (c *Cloud) fingerprint(in *computepb.Instance) {
	c.seq++
	in.Metadata.Fingerprint = ptr(fmt.Sprintf("fp-%d", c.seq))
}

func (c *Cloud) get(w http.ResponseWriter, project, zone, name string) {
	c.mu.Lock()
	in, ok := c.instances[project+"/"+zone+"/"+name]
	var b []byte
	if ok {
		b, _ = protojson.Marshal(in)
	}
	c.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "notFound", "The resource '"+resource(project, zone, name)+"' was not found")
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.Write(b)
}

func (c *Cloud) list(w http.ResponseWriter, r *http.Request, project, zone string) {
	q := r.URL.Query()
	match := func(*computepb.Instance) bool { return true }
	switch f := strings.TrimSpace(q.Get("filter")); {
	case f == "":
	case hasLabel.MatchString(f):
		k := hasLabel.FindStringSubmatch(f)[1]
		match = func(in *computepb.Instance) bool { _, ok := in.GetLabels()[k]; return ok }
	case isLabel.MatchString(f):
		m := isLabel.FindStringSubmatch(f)
		match = func(in *computepb.Instance) bool { v, ok := in.GetLabels()[m[1]]; return ok && v == m[2] }
	default:
		writeError(w, http.StatusBadRequest, "invalid", "Invalid value for field 'filter': '"+f+"'. Invalid list filter expression.")
		return
	}
	size := 500
	if v := q.Get("maxResults"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 500 {
			writeError(w, http.StatusBadRequest, "invalid", "Invalid value for field 'maxResults': '"+v+"'. Must be less than or equal to 500")
			return
		}
		if n > 0 {
			size = n
		}
	}
	from := 0
	if t := q.Get("pageToken"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, "invalid", "Invalid value for field 'pageToken': '"+t+"'.")
			return
		}
		from = n
	}
	c.mu.Lock()
	var all []*computepb.Instance
	for key, in := range c.instances {
		if strings.HasPrefix(key, project+"/"+zone+"/") && match(in) {
			all = append(all, in)
		}
	}
	slices.SortFunc(all, func(a, b *computepb.Instance) int { return strings.Compare(a.GetName(), b.GetName()) })
	list := &computepb.InstanceList{Kind: ptr("compute#instanceList"), Id: ptr("projects/" + project + "/zones/" + zone + "/instances")}
	for i := from; i < len(all) && i < from+size; i++ {
		list.Items = append(list.Items, all[i])
	}
	if from+size < len(all) {
		list.NextPageToken = ptr(strconv.Itoa(from + size))
	}
	b, _ := protojson.Marshal(list)
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.Write(b)
}

// newOp records an operation on a VM; it reads RUNNING until first
// polled, DONE from then on (the fake's changes take effect at once).
func (c *Cloud) newOp(project, zone, kind string, in *computepb.Instance) *computepb.Operation {
	c.seq++
	name := fmt.Sprintf("operation-%d-%08x", c.seq, uint32(c.seq*2654435761))
	now := c.now().Format(time.RFC3339)
	op := &computepb.Operation{
		Kind: ptr("compute#operation"), Id: ptr(uint64(c.seq)), Name: &name, OperationType: &kind,
		Zone:       ptr(base + "projects/" + project + "/zones/" + zone),
		TargetLink: ptr(base + resource(project, zone, in.GetName())),
		SelfLink:   ptr(base + "projects/" + project + "/zones/" + zone + "/operations/" + name),
		Status:     computepb.Operation_RUNNING.Enum(), Progress: ptr(int32(0)),
		InsertTime: &now, StartTime: &now, User: ptr("spotml@example.iam.gserviceaccount.com"),
	}
	c.ops[opKey(project, zone, name)] = op
	return op
}

func opKey(project, zone, name string) string { return project + "/" + zone + "/" + name }

func (c *Cloud) getOp(w http.ResponseWriter, project, zone, name string) {
	c.mu.Lock()
	op, ok := c.ops[opKey(project, zone, name)]
	var b []byte
	if ok {
		if op.GetStatus() != computepb.Operation_DONE {
			op.Status, op.Progress = computepb.Operation_DONE.Enum(), ptr(int32(100))
			op.EndTime = ptr(c.now().Format(time.RFC3339))
		}
		b, _ = protojson.Marshal(op)
	}
	c.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "notFound", "The resource 'projects/"+project+"/zones/"+zone+"/operations/"+name+"' was not found")
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.Write(b)
}

func writeProto(w http.ResponseWriter, m proto.Message) {
	b, _ := protojson.Marshal(m)
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.Write(b)
}

// writeError writes a googleapi error document, as Compute Engine does.
func writeError(w http.ResponseWriter, status int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"code": status, "message": msg,
		"errors": []map[string]string{{"message": msg, "domain": "global", "reason": reason}},
	}})
}

func last(s string) string { return s[strings.LastIndex(s, "/")+1:] }

func ptr[T any](v T) *T { return &v }
