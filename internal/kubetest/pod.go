package kubetest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

// A podRun plays the kubelet's part for one pod bound to a played node:
// volumes, init containers in order, then the containers (restarted per the
// pod's restartPolicy), readiness, status, and termination on deletion.
type podRun struct {
	n               *Node
	uid             types.UID
	namespace, name string
	dir             string

	mu        sync.Mutex
	pod       *corev1.Pod // the latest seen
	termAsked bool
	term      chan time.Duration // the grace period, once the pod is being deleted
	gone      chan struct{}      // closed once the pod left the API
	goneOnce  sync.Once

	// Owned by run.
	started     metav1.Time
	phase       corev1.PodPhase
	initDone    bool
	initStatus  []corev1.ContainerStatus
	ctrStatus   []corev1.ContainerStatus
	running     map[string]*runningCtr
	ready       map[string]bool
	mounts      map[string]string // volume name → host directory
	events      chan podEvent
	stopped     chan struct{} // closed when run returns
	restartWait map[string]bool
}

// A podEvent is something that happened to one of the pod's containers.
type podEvent struct {
	container string
	exited    *runningCtr // the container's run ended
	ready     *bool       // its readiness probe changed its mind
	retry     bool        // time to try starting it again
}

func newPodRun(n *Node, pod *corev1.Pod) *podRun {
	return &podRun{
		n: n, uid: pod.UID, namespace: pod.Namespace, name: pod.Name,
		dir:  filepath.Join(n.dir, "pods", pod.Namespace+"_"+pod.Name+"_"+string(pod.UID)),
		term: make(chan time.Duration, 1), gone: make(chan struct{}),
		running: map[string]*runningCtr{}, ready: map[string]bool{},
		events: make(chan podEvent, 64), stopped: make(chan struct{}),
		restartWait: map[string]bool{},
	}
}

// update records the latest pod and, on the first deletion timestamp, asks
// run to terminate it within its grace period.
func (r *podRun) update(pod *corev1.Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pod = pod
	if pod.DeletionTimestamp != nil && !r.termAsked {
		r.termAsked = true
		grace := 30 * time.Second
		if pod.DeletionGracePeriodSeconds != nil {
			grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
		}
		r.term <- grace
	}
}

func (r *podRun) removed() { r.goneOnce.Do(func() { close(r.gone) }) }

func (r *podRun) latest() *corev1.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pod
}

// errEnded says run should return: the pod was terminated, removed or the
// node killed while it waited.
var errEnded = errors.New("pod ended")

func (r *podRun) run() {
	defer close(r.stopped)
	pod := r.latest()
	r.started = metav1.Now()
	r.phase = corev1.PodPending
	waiting := "ContainerCreating"
	if len(pod.Spec.InitContainers) > 0 {
		waiting = "PodInitializing"
	}
	for _, c := range pod.Spec.InitContainers {
		r.initStatus = append(r.initStatus, newStatus(c, "PodInitializing"))
	}
	for _, c := range pod.Spec.Containers {
		r.ctrStatus = append(r.ctrStatus, newStatus(c, waiting))
	}
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		r.fail("kubetest: " + err.Error())
	}
	r.writeStatus()

	for {
		var err error
		if r.mounts, err = r.prepareVolumes(pod); err == nil {
			break
		}
		for i := range r.ctrStatus {
			r.ctrStatus[i].State = waitingState("CreateContainerConfigError", err.Error())
		}
		r.writeStatus()
		if r.pause(2*time.Second) != nil {
			r.end()
			return
		}
	}

	for i, c := range pod.Spec.InitContainers {
		for {
			code, err := r.runInit(i, c)
			if err != nil {
				r.end()
				return
			}
			if code == 0 {
				break
			}
			if pod.Spec.RestartPolicy == corev1.RestartPolicyNever {
				r.phase = corev1.PodFailed
				r.writeStatus()
				r.waitDeletion()
				return
			}
			r.initStatus[i].RestartCount++
			if r.pause(time.Second) != nil {
				r.end()
				return
			}
		}
	}
	r.initDone = true
	r.phase = corev1.PodRunning
	for _, c := range pod.Spec.Containers {
		r.startCtr(c)
	}
	r.writeStatus()

	for {
		if r.finished() {
			r.writeStatus()
			r.waitDeletion()
			return
		}
		select {
		case ev := <-r.events:
			r.handle(pod, ev)
			r.writeStatus()
		case grace := <-r.term:
			r.terminate(grace)
			return
		case <-r.gone:
			r.killAll()
			return
		case <-r.n.ctx.Done():
			r.killAll()
			return
		}
	}
}

// pause waits d unless the pod ends first, in which case it returns
// errEnded (after handling the ending).
func (r *podRun) pause(d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case grace := <-r.term:
		r.term <- grace
		return errEnded
	case <-r.gone:
		return errEnded
	case <-r.n.ctx.Done():
		return errEnded
	}
}

// end finishes a pod that was ended before its containers started.
func (r *podRun) end() {
	select {
	case grace := <-r.term:
		r.terminate(grace)
	default:
		r.killAll()
	}
}

// runInit runs init container i to completion and returns its exit code.
func (r *podRun) runInit(i int, c corev1.Container) (int, error) {
	for {
		rc, err := r.startContainer(c, r.initStatus[i].RestartCount)
		if err == nil {
			r.running[c.Name] = rc
			r.initStatus[i].State = runningState(rc.started)
			r.initStatus[i].Started = ptr.To(true)
			r.writeStatus()
			select {
			case <-rc.done:
			case grace := <-r.term:
				r.terminate(grace)
				return 0, errEnded
			case <-r.gone:
				r.killAll()
				return 0, errEnded
			case <-r.n.ctx.Done():
				r.killAll()
				return 0, errEnded
			}
			delete(r.running, c.Name)
			r.initStatus[i].Started = ptr.To(false)
			r.initStatus[i].State = terminatedState(rc)
			r.initStatus[i].Ready = rc.exitCode == 0
			r.writeStatus()
			return rc.exitCode, nil
		}
		r.initStatus[i].State = waitingState(startReason(err), err.Error())
		r.writeStatus()
		if r.pause(2*time.Second) != nil {
			return 0, errEnded
		}
	}
}

// startCtr starts a main container (or schedules another try).
func (r *podRun) startCtr(c corev1.Container) {
	i := r.index(c.Name)
	rc, err := r.startContainer(c, r.ctrStatus[i].RestartCount)
	if err != nil {
		r.ctrStatus[i].State = waitingState(startReason(err), err.Error())
		r.later(c.Name, 2*time.Second)
		return
	}
	r.running[c.Name] = rc
	r.ctrStatus[i].State = runningState(rc.started)
	r.ctrStatus[i].Started = ptr.To(true)
	r.ready[c.Name] = c.ReadinessProbe == nil
	go func() {
		<-rc.done
		select {
		case r.events <- podEvent{container: c.Name, exited: rc}:
		case <-r.stopped:
		}
	}()
	if c.ReadinessProbe != nil {
		go r.probe(c, rc)
	}
}

// later sends a retry event for container name after d.
func (r *podRun) later(name string, d time.Duration) {
	r.restartWait[name] = true
	go func() {
		select {
		case <-time.After(d):
		case <-r.stopped:
			return
		}
		select {
		case r.events <- podEvent{container: name, retry: true}:
		case <-r.stopped:
		}
	}()
}

// handle applies one container event, restarting per the restartPolicy.
func (r *podRun) handle(pod *corev1.Pod, ev podEvent) {
	i := r.index(ev.container)
	c := pod.Spec.Containers[i]
	switch {
	case ev.retry:
		delete(r.restartWait, c.Name)
		if r.ctrStatus[i].State.Running == nil {
			r.startCtr(c)
		}
	case ev.ready != nil:
		if r.running[c.Name] != nil {
			r.ready[c.Name] = *ev.ready
		}
	case ev.exited != nil:
		if r.running[c.Name] != ev.exited {
			return
		}
		delete(r.running, c.Name)
		r.ready[c.Name] = false
		r.ctrStatus[i].State = terminatedState(ev.exited)
		r.ctrStatus[i].Started = ptr.To(false)
		policy := pod.Spec.RestartPolicy
		if policy == corev1.RestartPolicyAlways || (policy == corev1.RestartPolicyOnFailure && ev.exited.exitCode != 0) {
			r.ctrStatus[i].LastTerminationState = r.ctrStatus[i].State
			r.ctrStatus[i].RestartCount++
			r.ctrStatus[i].State = waitingState("CrashLoopBackOff", "back-off restarting the container (played kubelet)")
			r.later(c.Name, time.Second)
		}
	}
}

// finished says every container has terminated for good, and sets the
// pod's phase from their exit codes.
func (r *podRun) finished() bool {
	if len(r.running) > 0 || len(r.restartWait) > 0 {
		return false
	}
	r.phase = phaseOf(r.ctrStatus)
	return true
}

func phaseOf(st []corev1.ContainerStatus) corev1.PodPhase {
	for _, s := range st {
		if s.State.Terminated == nil {
			return corev1.PodFailed // never ran (e.g. killed while waiting)
		}
		if s.State.Terminated.ExitCode != 0 {
			return corev1.PodFailed
		}
	}
	return corev1.PodSucceeded
}

// terminate is the kubelet's part in a graceful deletion: SIGTERM to every
// container, SIGKILL to those still running after grace, the final status
// written, then the pod removed from the API (grace 0, this pod's UID).
func (r *podRun) terminate(grace time.Duration) {
	var wg sync.WaitGroup
	for _, rc := range r.running {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc.stop(grace)
		}()
	}
	wg.Wait()
	r.markKilled()
	r.phase = phaseOf(r.ctrStatus)
	if !r.initDone {
		r.phase = corev1.PodFailed
	}
	r.writeStatus()
	r.finalize()
}

// waitDeletion waits, after the pod's containers ended, for its deletion
// and finishes it.
func (r *podRun) waitDeletion() {
	select {
	case <-r.term:
		r.finalize()
	case <-r.gone:
	case <-r.n.ctx.Done():
	}
}

// finalize removes the pod from the API, as the kubelet's status manager
// does once the pod's containers are gone.
func (r *podRun) finalize() {
	if r.n.ctx.Err() != nil {
		return
	}
	err := r.n.c.Client.CoreV1().Pods(r.namespace).Delete(r.n.ctx, r.name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To[int64](0),
		Preconditions:      &metav1.Preconditions{UID: &r.uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		r.n.c.t.Logf("kubetest: node %s: delete pod %s/%s: %v", r.n.Name, r.namespace, r.name, err)
	}
}

// killAll SIGKILLs every container (the pod is gone, or the node died).
func (r *podRun) killAll() {
	var wg sync.WaitGroup
	for _, rc := range r.running {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc.stop(0)
		}()
	}
	wg.Wait()
}

// markKilled records the end of the containers terminate stopped.
func (r *podRun) markKilled() {
	for name, rc := range r.running {
		if i := r.index(name); i >= 0 {
			r.ctrStatus[i].State = terminatedState(rc)
			r.ctrStatus[i].Started = ptr.To(false)
			r.ready[name] = false
		} else {
			for j := range r.initStatus {
				if r.initStatus[j].Name == name {
					r.initStatus[j].State = terminatedState(rc)
				}
			}
		}
		delete(r.running, name)
	}
	for i := range r.ctrStatus {
		if r.ctrStatus[i].State.Waiting != nil {
			r.ctrStatus[i].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 137, Reason: "ContainerStatusUnknown", Message: "the pod was deleted before the container ran",
			}}
		}
	}
	r.restartWait = map[string]bool{}
}

func (r *podRun) index(name string) int {
	for i, s := range r.ctrStatus {
		if s.Name == name {
			return i
		}
	}
	return -1
}

// probe runs a container's readiness probe until the container ends,
// reporting changes as events.
func (r *podRun) probe(c corev1.Container, rc *runningCtr) {
	p := c.ReadinessProbe
	period := time.Duration(max(p.PeriodSeconds, 1)) * time.Second
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	select {
	case <-time.After(time.Duration(p.InitialDelaySeconds) * time.Second):
	case <-rc.done:
		return
	}
	ready, ok, bad := false, 0, 0
	for {
		if err := r.check(p, rc, timeout); err == nil {
			ok, bad = ok+1, 0
		} else {
			ok, bad = 0, bad+1
		}
		change := (!ready && ok >= int(max(p.SuccessThreshold, 1))) || (ready && bad >= int(max(p.FailureThreshold, 1)))
		if change {
			ready = !ready
			v := ready
			select {
			case r.events <- podEvent{container: c.Name, ready: &v}:
			case <-r.stopped:
				return
			}
		}
		select {
		case <-time.After(period):
		case <-rc.done:
			return
		}
	}
}

// check runs one probe: an HTTP GET (2xx/3xx), a TCP connect or an exec in
// the container (exit 0), against the pod's IP.
func (r *podRun) check(p *corev1.Probe, rc *runningCtr, timeout time.Duration) error {
	host := r.n.Address
	switch {
	case p.HTTPGet != nil:
		if p.HTTPGet.Host != "" {
			host = p.HTTPGet.Host
		}
		port, err := r.port(p.HTTPGet.Port.String())
		if err != nil {
			return err
		}
		scheme := "http"
		if p.HTTPGet.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		client := http.Client{Timeout: timeout}
		resp, err := client.Get(fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), p.HTTPGet.Path))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		port, err := r.port(p.TCPSocket.Port.String())
		if err != nil {
			return err
		}
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(port)), timeout)
		if err != nil {
			return err
		}
		return conn.Close()
	case p.Exec != nil:
		return rc.exec(timeout, p.Exec.Command...)
	}
	return errors.New("probe has no handler")
}

// port resolves a probe's port, a number or a container port's name.
func (r *podRun) port(s string) (int, error) {
	if n, err := strconv.Atoi(s); err == nil {
		return n, nil
	}
	for _, c := range r.latest().Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == s {
				return int(p.ContainerPort), nil
			}
		}
	}
	return 0, fmt.Errorf("no container port named %q", s)
}

// writeStatus writes the pod's status as the kubelet would, keeping the
// conditions others own (PodScheduled, DisruptionTarget).
func (r *podRun) writeStatus() {
	if r.n.ctx.Err() != nil {
		return
	}
	select {
	case <-r.gone:
		return
	default:
	}
	pods := r.n.c.Client.CoreV1().Pods(r.namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(r.n.ctx, r.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.UID != r.uid {
			return nil
		}
		r.fillStatus(&cur.Status)
		_, err = pods.UpdateStatus(r.n.ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) && r.n.ctx.Err() == nil {
		r.n.c.t.Logf("kubetest: node %s: write status of pod %s/%s: %v", r.n.Name, r.namespace, r.name, err)
	}
}

func (r *podRun) fillStatus(st *corev1.PodStatus) {
	st.Phase = r.phase
	st.HostIP = r.n.Address
	st.HostIPs = []corev1.HostIP{{IP: r.n.Address}}
	st.PodIP = r.n.Address
	st.PodIPs = []corev1.PodIP{{IP: r.n.Address}}
	st.StartTime = &r.started
	st.InitContainerStatuses = append([]corev1.ContainerStatus(nil), r.initStatus...)
	st.ContainerStatuses = make([]corev1.ContainerStatus, len(r.ctrStatus))
	allReady := r.initDone && len(r.ctrStatus) > 0
	for i, s := range r.ctrStatus {
		s.Ready = r.running[s.Name] != nil && r.ready[s.Name]
		allReady = allReady && s.Ready
		st.ContainerStatuses[i] = s
	}
	terminal := r.phase == corev1.PodSucceeded || r.phase == corev1.PodFailed
	if terminal {
		allReady = false
	}
	sandbox := !terminal && r.n.ctx.Err() == nil
	setCondition(st, corev1.PodReadyToStartContainers, sandbox, "")
	setCondition(st, corev1.PodInitialized, r.initDone || len(r.initStatus) == 0, reasonIf(!r.initDone && len(r.initStatus) > 0, "ContainersNotInitialized"))
	setCondition(st, corev1.ContainersReady, allReady, reasonIf(!allReady, "ContainersNotReady"))
	setCondition(st, corev1.PodReady, allReady, reasonIf(!allReady, "ContainersNotReady"))
	if terminal {
		setCondition(st, corev1.PodInitialized, true, "PodCompleted")
		setCondition(st, corev1.ContainersReady, false, "PodCompleted")
		setCondition(st, corev1.PodReady, false, "PodCompleted")
	}
}

func reasonIf(b bool, reason string) string {
	if b {
		return reason
	}
	return ""
}

// setCondition sets a pod condition, moving its transition time only when
// its status changes.
func setCondition(st *corev1.PodStatus, t corev1.PodConditionType, ok bool, reason string) {
	status := corev1.ConditionFalse
	if ok {
		status = corev1.ConditionTrue
	}
	for i := range st.Conditions {
		if st.Conditions[i].Type == t {
			if st.Conditions[i].Status != status {
				st.Conditions[i].LastTransitionTime = metav1.Now()
			}
			st.Conditions[i].Status, st.Conditions[i].Reason = status, reason
			return
		}
	}
	st.Conditions = append(st.Conditions, corev1.PodCondition{Type: t, Status: status, Reason: reason, LastTransitionTime: metav1.Now()})
}

// fail marks the pod Failed for a fault of the harness itself.
func (r *podRun) fail(msg string) {
	r.phase = corev1.PodFailed
	r.n.c.t.Logf("kubetest: node %s: pod %s/%s: %s", r.n.Name, r.namespace, r.name, msg)
}

func newStatus(c corev1.Container, reason string) corev1.ContainerStatus {
	return corev1.ContainerStatus{Name: c.Name, Image: c.Image, Started: ptr.To(false), State: waitingState(reason, "")}
}

func waitingState(reason, msg string) corev1.ContainerState {
	return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
}

func runningState(at time.Time) corev1.ContainerState {
	return corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(at)}}
}

func terminatedState(rc *runningCtr) corev1.ContainerState {
	reason := "Completed"
	if rc.exitCode != 0 {
		reason = "Error"
	}
	return corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: int32(rc.exitCode), Reason: reason,
		StartedAt: metav1.NewTime(rc.started), FinishedAt: metav1.NewTime(rc.finished),
		ContainerID: "runc://" + rc.spec.id,
	}}
}

// errImage is a container's image not registered with the cluster.
var errImage = errors.New("image not imported")

func startReason(err error) string {
	if errors.Is(err, errImage) {
		return "ErrImageNeverPull"
	}
	return "CreateContainerError"
}

// startContainer starts container c of the pod (its restart-th run).
func (r *podRun) startContainer(c corev1.Container, restart int32) (*runningCtr, error) {
	pod := r.latest()
	image, ok := r.n.c.image(c.Image)
	if !ok {
		return nil, fmt.Errorf("%w: container image %q is not present with pull policy of Never (import it with Cluster.ImportImage)", errImage, c.Image)
	}
	spec, err := r.containerSpec(pod, c)
	if err != nil {
		return nil, err
	}
	spec.image = image
	spec.id = fmt.Sprintf("%s-%s-%s-%d", r.n.Name, string(r.uid)[:8], c.Name, restart)
	spec.bundle = filepath.Join(r.dir, "ctr", fmt.Sprintf("%s-%d", c.Name, restart))
	spec.log = filepath.Join(r.dir, c.Name+".log")
	spec.cgroup = "/" + r.n.c.cgroup + "/" + spec.id
	return startContainer(filepath.Join(r.n.c.Dir, "runc"), spec)
}
