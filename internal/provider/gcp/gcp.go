// Package gcp is the provider that runs spotml nodes as Compute Engine
// VMs, Spot or standard, through the Compute Engine Go client
// (cloud.google.com/go/compute/apiv1, REST). One node is one VM named
// after it, labelled with its pool and node, made by instances.insert in
// the node's zone (or another of the pool's zones while that one is out
// of capacity); its metadata startup-script installs and starts the
// agent. A runner lists the pools' VMs and reports what Compute Engine
// did: a Spot VM preempted (deleted, or stopped with its disk kept), an
// insert that found no capacity, the zone a VM landed in.
package gcp

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	compute "cloud.google.com/go/compute/apiv1"
	"cloud.google.com/go/compute/apiv1/computepb"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/provider/cloudinit"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// Name is the provider name pools use.
const Name = spec.ProviderGCP

// Labels spotml puts on its VMs, so that its runner finds VMs whose node
// is gone and a person sees whose they are; and the metadata keys that
// carry a node's bootstrap and identity.
const (
	LabelPool      = "spotml-pool"
	LabelNode      = "spotml-node"
	KeyStartup     = "startup-script"
	KeyNode        = "spotml-node"
	KeyCredential  = "spotml-credential"
	cloudPlatform  = "https://www.googleapis.com/auth/cloud-platform"
	shortageMemory = 5 * time.Minute
	insertGrace    = 3 * time.Minute
)

// Config says how VMs reach the control plane and get spotml.
type Config struct {
	ServerURL string
	SpotmlURL string
	AgentArgs []string
	// Interval is how often the runner lists the pools' VMs; default 15s.
	Interval time.Duration
	// OpTimeout bounds how long a restart waits for Compute Engine to
	// start a stopped VM; default 3m.
	OpTimeout time.Duration
}

// Clients are the Compute Engine clients the provider calls: made with
// compute.NewInstancesRESTClient and NewZoneOperationsRESTClient over
// Application Default Credentials in the product, and with
// option.WithEndpoint at a loopback Compute API in tests.
type Clients struct {
	Instances  *compute.InstancesClient
	Operations *compute.ZoneOperationsClient
}

// Provider is the GCP provider.
type Provider struct {
	c   Clients
	cfg Config
	log *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	pending map[string]pendingOp // node → its insert still running
	short   map[string]time.Time // pool/zone → when it last had no capacity
	placed  map[string]bool      // provider IDs reported Placed
	listed  map[string]bool      // provider IDs whose VM a pass has listed
	cleared map[string]bool      // provider IDs whose credential left the metadata
	seen    map[[2]string]bool   // project, zone of pools seen
	view    control.View         // Run's, for Evict
}

var (
	_ control.Provider = (*Provider)(nil)
	_ control.Runner   = (*Provider)(nil)
	_ control.Evicter  = (*Provider)(nil)
)

type pendingOp struct {
	project, zone, name string
	pool                string
}

// New returns a provider that reaches Compute Engine through c.
func New(c Clients, cfg Config, log *slog.Logger, now func() time.Time) *Provider {
	if cfg.Interval <= 0 {
		cfg.Interval = 15 * time.Second
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 3 * time.Minute
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return &Provider{c: c, cfg: cfg, log: log.With("provider", Name), now: now,
		pending: map[string]pendingOp{}, short: map[string]time.Time{}, placed: map[string]bool{}, listed: map[string]bool{},
		cleared: map[string]bool{}, seen: map[[2]string]bool{}}
}

// CapacityCodes are the error codes with which Compute Engine refuses a
// VM for lack of capacity in a zone, or of quota for it: the launch is a
// capacity shortage, not a failure. They come in an insert or start
// operation's error (code), or as an API error's reason.
var CapacityCodes = map[string]bool{
	"ZONE_RESOURCE_POOL_EXHAUSTED":              true,
	"ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS": true,
	"QUOTA_EXCEEDED":                            true,
	"quotaExceeded":                             true,
}

// ProviderID is a node's VM: project/zone/name.
func ProviderID(project, zone, name string) string { return project + "/" + zone + "/" + name }

func parseID(id string) (project, zone, name string, err error) {
	p := strings.Split(id, "/")
	if len(p) != 3 || p[0] == "" || p[1] == "" || p[2] == "" {
		return "", "", "", fmt.Errorf("provider ID %q is not project/zone/instance", id)
	}
	return p[0], p[1], p[2], nil
}

// Bootstrap is the startup script of the provider's VMs. The node's
// identity is not in it but in two metadata keys of their own, which
// spotml changes when a stopped VM is started again (a new incarnation,
// a new credential) and from which it removes the credential once the
// agent has registered, so that no task on the VM can read it from the
// metadata server.
func Bootstrap(cfg Config, setup []string) cloudinit.Bootstrap {
	get := `curl -fsS --retry 20 --retry-delay 3 --retry-connrefused -H 'Metadata-Flavor: Google' "$imds/computeMetadata/v1/instance/attributes/`
	return cloudinit.Bootstrap{ServerURL: cfg.ServerURL, SpotmlURL: cfg.SpotmlURL, AgentArgs: cfg.AgentArgs, Setup: setup,
		Format:       spec.NoticeGCP,
		ReadIdentity: `printf 'node=%s\ncredential=%s\n' "$(` + get + KeyNode + `" || true)" "$(` + get + KeyCredential + `" || true)"`}
}

// Launch makes the node's VM, or starts a stopped node's VM again. A new
// VM's insert is accepted here and finishes on Compute Engine's time; the
// runner reports an insert that failed for capacity as a shortage.
func (p *Provider) Launch(ctx context.Context, req control.LaunchRequest) (control.Launched, error) {
	pool, n := req.Pool, req.Node
	g := pool.Spec.GCP
	if g == nil {
		return control.Launched{}, fmt.Errorf("pool %s: spec.gcp is missing", pool.Metadata.Name)
	}
	if p.cfg.ServerURL == "" || p.cfg.SpotmlURL == "" {
		return control.Launched{}, errors.New("the gcp provider needs --cloud-agent-server-url and --cloud-spotml-url")
	}
	if req.Restart && n.ProviderID != "" {
		started, err := p.restart(ctx, n, req.Credential)
		if err != nil {
			return control.Launched{}, err
		}
		if started {
			return control.Launched{ProviderID: n.ProviderID}, nil
		}
		// The VM is gone (deleted by someone): a new one takes its name.
	}
	var refusals []string
	for _, zone := range p.zones(pool, n.Zone) {
		in := p.instanceFor(pool, n, zone, req.Credential)
		rid := requestID(n.Name, n.Incarnation, zone)
		op, err := p.c.Instances.Insert(ctx, &computepb.InsertInstanceRequest{
			Project: g.Project, Zone: zone, InstanceResource: in, RequestId: &rid,
		})
		if err == nil && op.Done() {
			// Finished at once: it may carry its refusal already.
			err = opError(op.Proto())
		}
		if err != nil {
			if c := capacityCode(err); c != "" {
				p.markShort(pool.Metadata.Name, zone)
				refusals = append(refusals, zone+": "+c)
				continue
			}
			return control.Launched{}, fmt.Errorf("insert VM %s in %s: %w", n.Name, zone, err)
		}
		p.mu.Lock()
		if !op.Done() {
			p.pending[n.Name] = pendingOp{project: g.Project, zone: zone, name: op.Name(), pool: pool.Metadata.Name}
		}
		p.mu.Unlock()
		p.log.Info("node launched", "node", n.Name, "zone", zone, "priority", pool.Spec.Priority)
		return control.Launched{ProviderID: ProviderID(g.Project, zone, n.Name)}, nil
	}
	return control.Launched{}, fmt.Errorf("%w: %s %s: %s", control.ErrNoCapacity, pool.Spec.Priority, n.InstanceType, strings.Join(refusals, ", "))
}

// zones are the zones to try a node in: its own first, then the pool's
// others, leaving out those that had no capacity lately unless all did.
func (p *Provider) zones(pool spec.Pool, first string) []string {
	all := slices.Clone(pool.Spec.Zones)
	if i := slices.Index(all, first); i > 0 {
		all = append([]string{first}, slices.Delete(all, i, i+1)...)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var open []string
	for _, z := range all {
		if at, ok := p.short[pool.Metadata.Name+"/"+z]; !ok || p.now().Sub(at) > shortageMemory {
			open = append(open, z)
		}
	}
	if len(open) == 0 {
		return all
	}
	return open
}

func (p *Provider) markShort(pool, zone string) {
	p.mu.Lock()
	p.short[pool+"/"+zone] = p.now()
	p.mu.Unlock()
}

// instanceFor is the VM a node is.
func (p *Provider) instanceFor(pool spec.Pool, n store.Node, zone, credential string) *computepb.Instance {
	g := pool.Spec.GCP
	labels := map[string]string{}
	for k, v := range g.Labels {
		labels[k] = v
	}
	labels[LabelPool], labels[LabelNode] = pool.Metadata.Name, n.Name
	disk := &computepb.AttachedDiskInitializeParams{SourceImage: &g.Image}
	if g.DiskSizeGB > 0 {
		disk.DiskSizeGb = &g.DiskSizeGB
	}
	nic := &computepb.NetworkInterface{Network: &g.Network}
	if g.Subnetwork != "" {
		nic.Subnetwork = &g.Subnetwork
	}
	if !g.InternalOnly {
		nic.AccessConfigs = []*computepb.AccessConfig{{Name: ptr("External NAT"), Type: ptr("ONE_TO_ONE_NAT")}}
	}
	sa := g.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	in := &computepb.Instance{
		Name:        &n.Name,
		MachineType: ptr("zones/" + zone + "/machineTypes/" + n.InstanceType),
		Labels:      labels,
		Disks: []*computepb.AttachedDisk{{
			// The disk goes with the VM: a deleted node leaves nothing billed.
			Boot: ptr(true), AutoDelete: ptr(true), InitializeParams: disk,
		}},
		NetworkInterfaces: []*computepb.NetworkInterface{nic},
		ServiceAccounts:   []*computepb.ServiceAccount{{Email: &sa, Scopes: []string{cloudPlatform}}},
		Metadata: &computepb.Metadata{Items: []*computepb.Items{
			{Key: ptr(KeyStartup), Value: ptr(Bootstrap(p.cfg, g.Setup).StartupScript())},
			{Key: ptr(KeyNode), Value: &n.Name},
			{Key: ptr(KeyCredential), Value: &credential},
		}},
	}
	for _, a := range g.Accelerators {
		in.GuestAccelerators = append(in.GuestAccelerators, &computepb.AcceleratorConfig{
			AcceleratorType: ptr("zones/" + zone + "/acceleratorTypes/" + a.Type), AcceleratorCount: ptr(a.Count)})
	}
	if pool.Spec.Priority == spec.PrioritySpot {
		action := "DELETE"
		if pool.Spec.EvictionPolicy == spec.EvictionDeallocate {
			action = "STOP"
		}
		// Spot VMs cannot live-migrate or restart on their own.
		in.Scheduling = &computepb.Scheduling{ProvisioningModel: ptr("SPOT"), InstanceTerminationAction: &action,
			OnHostMaintenance: ptr("TERMINATE"), AutomaticRestart: ptr(false)}
	} else {
		in.Scheduling = &computepb.Scheduling{ProvisioningModel: ptr("STANDARD"), AutomaticRestart: ptr(true), OnHostMaintenance: ptr("MIGRATE")}
		if len(g.Accelerators) > 0 {
			in.Scheduling.OnHostMaintenance = ptr("TERMINATE") // VMs with GPUs do not live-migrate
		}
	}
	return in
}

// restart gives a stopped VM this incarnation's identity and starts it,
// waiting until Compute Engine has started it or refused; false if the VM
// no longer exists.
func (p *Provider) restart(ctx context.Context, n store.Node, credential string) (bool, error) {
	project, zone, name, err := parseID(n.ProviderID)
	if err != nil {
		return false, fmt.Errorf("node %s: %w", n.Name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.OpTimeout)
	defer cancel()
	in, err := p.c.Instances.Get(ctx, &computepb.GetInstanceRequest{Project: project, Zone: zone, Instance: name})
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("node %s: get VM: %w", n.Name, err)
	}
	// The new credential must be in place before the VM boots.
	md := withItem(in.GetMetadata(), KeyCredential, &credential)
	md = withItem(md, KeyNode, &n.Name)
	if err := p.wait(ctx, func() (*compute.Operation, error) {
		return p.c.Instances.SetMetadata(ctx, &computepb.SetMetadataInstanceRequest{Project: project, Zone: zone, Instance: name, MetadataResource: md})
	}); err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("node %s: set metadata: %w", n.Name, err)
	}
	p.mu.Lock()
	delete(p.cleared, n.ProviderID)
	p.mu.Unlock()
	rid := requestID(n.Name, n.Incarnation, "start")
	if err := p.wait(ctx, func() (*compute.Operation, error) {
		return p.c.Instances.Start(ctx, &computepb.StartInstanceRequest{Project: project, Zone: zone, Instance: name, RequestId: &rid})
	}); err != nil {
		if c := capacityCode(err); c != "" {
			return false, fmt.Errorf("%w: start VM %s in %s: %s", control.ErrNoCapacity, name, zone, c)
		}
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("node %s: start VM: %w", n.Name, err)
	}
	p.log.Info("node restarted", "node", n.Name, "zone", zone)
	return true, nil
}

// wait runs a call that makes an operation and waits for the operation
// to finish; its error is the call's or the operation's.
func (p *Provider) wait(ctx context.Context, call func() (*compute.Operation, error)) error {
	op, err := call()
	if err != nil {
		return err
	}
	if !op.Done() {
		// Wait polls zoneOperations.get; an operation that ends in
		// error is answered as a googleapi error without its codes, so
		// the codes are read from the operation itself.
		if err := op.Wait(ctx); err != nil && op.Proto().GetError() == nil {
			return err
		}
	}
	return opError(op.Proto())
}

// Stop deletes a node's VM, with its boot disk. A VM already gone is
// stopped. It does not wait for the deletion: the runner deletes again a
// VM whose node has ended. spotml's own Stop (scale-in, an ended node)
// always deletes, also in a pool whose Spot VMs Compute Engine stops on
// preemption: a stopped VM's disk is kept for the node that comes back
// after a preemption, not for a node spotml removed.
func (p *Provider) Stop(ctx context.Context, n store.Node) error {
	if n.ProviderID == "" {
		return nil // Launch never made a VM
	}
	project, zone, name, err := parseID(n.ProviderID)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	p.mu.Lock()
	delete(p.pending, n.Name)
	p.mu.Unlock()
	return p.deleteVM(ctx, project, zone, name)
}

func (p *Provider) deleteVM(ctx context.Context, project, zone, name string) error {
	_, err := p.c.Instances.Delete(ctx, &computepb.DeleteInstanceRequest{Project: project, Zone: zone, Instance: name})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("delete VM %s in %s: %w", name, zone, err)
	}
	return nil
}

// Evict asks Compute Engine to simulate a host maintenance event on a
// Spot node's VM (instances.simulateMaintenanceEvent), which Google
// documents as the way to test a Spot VM's preemption: the VM's
// instance/preempted metadata turns TRUE, which its agent reports, and
// the VM is then stopped or deleted as its instanceTerminationAction
// says. Compute Engine gives its own 30 s notice, so noticeFor is not
// spotml's to grant.
func (p *Provider) Evict(ctx context.Context, node string, noticeFor time.Duration) error {
	p.mu.Lock()
	view := p.view
	p.mu.Unlock()
	if view == nil {
		return errors.New("gcp: the provider is not running yet")
	}
	nodes, err := view.ListNodes(ctx)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if n.Name != node {
			continue
		}
		if n.Priority != spec.PrioritySpot {
			return fmt.Errorf("node %s is not a Spot VM: a standard VM live-migrates through host maintenance, so Compute Engine cannot preempt it; evict a node of a spot pool", node)
		}
		project, zone, name, err := parseID(n.ProviderID)
		if err != nil {
			return fmt.Errorf("node %s: %w", node, err)
		}
		if _, err := p.c.Instances.SimulateMaintenanceEvent(ctx, &computepb.SimulateMaintenanceEventInstanceRequest{
			Project: project, Zone: zone, Instance: name}); err != nil {
			return fmt.Errorf("node %s: simulate maintenance event: %w", node, err)
		}
		return nil
	}
	return fmt.Errorf("node %s: %w", node, store.ErrNotFound)
}

// opError is a finished operation's error, nil if it succeeded.
func opError(op *computepb.Operation) error {
	errs := op.GetError().GetErrors()
	if len(errs) == 0 {
		return nil
	}
	return &OpError{Code: errs[0].GetCode(), Message: errs[0].GetMessage(), HTTPStatus: int(op.GetHttpErrorStatusCode())}
}

// OpError is the error a Compute Engine operation ended with.
type OpError struct {
	Code, Message string
	HTTPStatus    int
}

func (e *OpError) Error() string { return e.Code + ": " + e.Message }

// capacityCode is the capacity error code err carries, empty if none.
func capacityCode(err error) string {
	var oe *OpError
	if errors.As(err, &oe) && CapacityCodes[oe.Code] {
		return oe.Code
	}
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		for _, e := range ge.Errors {
			if CapacityCodes[e.Reason] {
				return e.Reason
			}
		}
	}
	return ""
}

func isNotFound(err error) bool {
	var ge *googleapi.Error
	if errors.As(err, &ge) && ge.Code == http.StatusNotFound {
		return true
	}
	var oe *OpError
	return errors.As(err, &oe) && (oe.HTTPStatus == http.StatusNotFound || oe.Code == "RESOURCE_NOT_FOUND")
}

// requestID is the requestId of one call for one incarnation of a node: a
// UUID, as Compute Engine requires, the same each time the call is
// retried, so that a retry after a lost answer gets the same operation.
func requestID(parts ...any) string {
	h := sha256.Sum256(fmt.Append(nil, parts...))
	h[6] = h[6]&0x0f | 0x50 // version 5 (name-based, SHA)
	h[8] = h[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// withItem is md with key set to value, or removed if value is nil; it
// keeps md's fingerprint, which setMetadata checks.
func withItem(md *computepb.Metadata, key string, value *string) *computepb.Metadata {
	out := &computepb.Metadata{Fingerprint: md.Fingerprint}
	for _, it := range md.GetItems() {
		if it.GetKey() != key {
			out.Items = append(out.Items, it)
		}
	}
	if value != nil {
		out.Items = append(out.Items, &computepb.Items{Key: &key, Value: value})
	}
	return out
}

func item(md *computepb.Metadata, key string) (string, bool) {
	for _, it := range md.GetItems() {
		if it.GetKey() == key {
			return it.GetValue(), true
		}
	}
	return "", false
}

func ptr[T any](v T) *T { return &v }

// last is the last path element of a URL or partial URL (a zone's or a
// machine type's name).
func last(s string) string { return s[strings.LastIndex(s, "/")+1:] }

// NewClients makes the clients with opts: none in the product
// (Application Default Credentials, the public endpoint), an endpoint and
// no authentication in tests. It fails when no credentials are found.
func NewClients(ctx context.Context, opts ...option.ClientOption) (Clients, error) {
	in, err := compute.NewInstancesRESTClient(ctx, opts...)
	if err != nil {
		return Clients{}, err
	}
	ops, err := compute.NewZoneOperationsRESTClient(ctx, opts...)
	if err != nil {
		in.Close()
		return Clients{}, err
	}
	return Clients{Instances: in, Operations: ops}, nil
}

// Close closes the clients' connections.
func (c Clients) Close() error {
	return errors.Join(c.Instances.Close(), c.Operations.Close())
}
