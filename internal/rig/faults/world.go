package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/version"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/rig/child"
	"github.com/warmpool/warmpool/internal/rig/controlplane"
	"github.com/warmpool/warmpool/manifests"
)

// The scenario's clocks, short so that 30 s of churn crosses every timeout
// several times: a dead leader is replaced in ~3 s, a silent NotReady node
// is lost after 6 s, a leak is reclaimed within ~4 s.
const (
	leaseDuration = 3 * time.Second
	renewDeadline = 2 * time.Second
	retryPeriod   = 500 * time.Millisecond
	nodeLossGrace = 6 * time.Second
	gcInterval    = 2 * time.Second
	missTimeout   = 2 * time.Second
	reuseDelay    = 500 * time.Millisecond
	poolName      = "faults"
	namespace     = "faults"
	electionLease = "warmpool-allocator"
)

// Binaries are the programs a scenario runs.
type Binaries struct {
	Agent, Allocator string
	// CNIPath holds the warmpool plugin binary.
	CNIPath []string
}

// world is one scenario's cluster: the control plane, the bus, the
// allocator replicas and the nodes' agents, each supervised (restarted
// when it dies, unless a fault holds it down).
type world struct {
	cfg   Config
	dir   string
	log   *eventLog
	kube  kubernetes.Interface
	wp    *client.Clientset
	cp    *controlplane.ControlPlane
	api   *apiProxy // the allocators' way to the apiserver
	cni   *libcni.CNIConfig
	stats *Report

	rndMu sync.Mutex
	rnd   *rand.Rand

	natsMu   sync.Mutex
	nats     *broker.Server // nil while restarting
	natsPort int

	allocs []*component
	agents []*component // one per node, in node order

	// fatal records the first error that ends the scenario (a component
	// that cannot be restarted, an invariant broken).
	fatalOnce sync.Once
	fatal     chan error
	// healed is when the last fault healed and the churn stopped (unix
	// ns; 0 before): the liveness bound counts from it.
	healed atomic.Int64

	runtime *runtime

	// supervisors restart components until stopSupervisors.
	supervisors     sync.WaitGroup
	stopSupervisors context.CancelFunc
}

// component is a supervised process: an allocator replica or a node's
// agent, restarted after it exits unless held.
type component struct {
	name string
	node string // agents only
	dir  string // agents: socket and store
	// natsProxy carries an agent's bus connection, so a partition cuts it
	// alone.
	natsProxy *tcpProxy
	conf      *libcni.NetworkConfigList // agents: the plugin's netconf

	mu          sync.Mutex
	proc        *child.Process
	metrics     string // http://host:port
	incarnation int
	held        int    // >0: a fault owns its restart
	failpoint   string // to arm in the next start
	armed       string // armed in the running incarnation
	killed      bool   // the last exit was ours (SIGKILL), not a crash
}

func (w *world) intn(n int) int {
	w.rndMu.Lock()
	defer w.rndMu.Unlock()
	return w.rnd.IntN(n)
}

func (w *world) perm(n int) []int {
	w.rndMu.Lock()
	defer w.rndMu.Unlock()
	return w.rnd.Perm(n)
}

// between returns a random duration in [lo, hi).
func (w *world) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(w.intn(int(hi-lo)))
}

func (w *world) fail(err error) {
	w.fatalOnce.Do(func() { w.fatal <- err })
}

// livenessBound is how long after the faults healed every node must serve
// ADDs again: the allocator's election and takeover (a few seconds with the
// suite's election timings), then each agent's sync, retried every second.
// Past it, an agent down or fenced for livenessHold in a row fails the
// scenario. The hold forgives what is not a lost node: an agent that
// killed itself at a failpoint armed before the heal and restarts, and a
// sync slower than the suite's 3 s warm TTL on a busy machine.
const (
	livenessBound = 20 * time.Second
	livenessHold  = 10 * time.Second
)

// pastLiveness says whether the liveness bound has passed since the faults
// healed, and by how long they have been healed.
func (w *world) pastLiveness() (bool, time.Duration) {
	h := w.healed.Load()
	if h == 0 {
		return false, 0
	}
	since := time.Since(time.Unix(0, h))
	return since > livenessBound, since.Round(time.Second)
}

func (a *component) socket() string { return filepath.Join(a.dir, "agent.sock") }
func (a *component) store() string  { return filepath.Join(a.dir, "agent.db") }

func (a *component) current() (*child.Process, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.proc, a.metrics
}

// up builds the cluster: control plane, CRDs, pool, nodes, NATS, two
// allocator replicas and the agents, and waits until every agent holds
// warm units.
func (w *world) up(ctx context.Context) error {
	cp, err := controlplane.Start(ctx, controlplane.Options{Dir: filepath.Join(w.dir, "cp")})
	if err != nil {
		return err
	}
	w.cp = cp
	cfg := cp.RESTConfig()
	if err := manifests.InstallCRDs(ctx, cfg); err != nil {
		return err
	}
	if w.api, err = newAPIProxy(w, cfg, w.dir); err != nil {
		return err
	}
	if w.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	if w.wp, err = client.New(cfg); err != nil {
		return err
	}
	if _, err := w.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	if _, err := w.wp.IPPools().Create(ctx, pool(w.cfg.Peak), metav1.CreateOptions{}); err != nil {
		return err
	}
	if err := w.startNATS(0); err != nil {
		return err
	}
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	w.cni = libcni.NewCNIConfigWithCacheDir(w.cfg.Binaries.CNIPath, filepath.Join(w.dir, "cni-cache"), exec)
	for i := range 2 {
		w.allocs = append(w.allocs, &component{name: fmt.Sprintf("alloc-%d", i)})
	}
	for i := range w.cfg.Nodes {
		node := fmt.Sprintf("node-%d", i)
		if err := controlplane.RegisterNode(ctx, w.kube, node, nil); err != nil {
			return err
		}
		a := &component{name: "agent-" + node, node: node, dir: filepath.Join(w.dir, "nodes", node)}
		if err := os.MkdirAll(a.dir, 0o700); err != nil {
			return err
		}
		if a.natsProxy, err = newTCPProxy(w.natsAddr()); err != nil {
			return err
		}
		if a.conf, err = libcni.ConfListFromBytes(fmt.Appendf(nil, `{"cniVersion":"1.1.0","name":"underlay","plugins":[{"type":"warmpool","ipam":{"type":"warmpool","pool":%q,"socket":%q,"timeout":"5s"}}]}`, poolName, a.socket())); err != nil {
			return err
		}
		w.agents = append(w.agents, a)
	}
	for _, c := range w.allocs {
		if err := w.start(c); err != nil {
			return err
		}
	}
	for _, c := range w.agents {
		if err := w.start(c); err != nil {
			return err
		}
	}
	sctx, stop := context.WithCancel(ctx)
	w.stopSupervisors = stop
	for _, c := range append(append([]*component{}, w.allocs...), w.agents...) {
		w.supervisors.Add(1)
		go func() {
			defer w.supervisors.Done()
			w.supervise(sctx, c)
		}()
	}
	return w.waitWarm(ctx)
}

// down stops everything; the control plane last.
func (w *world) down() {
	if w.stopSupervisors != nil {
		w.stopSupervisors()
		w.supervisors.Wait()
	}
	for _, c := range append(append([]*component{}, w.agents...), w.allocs...) {
		if p, _ := c.current(); p != nil {
			p.Stop(5 * time.Second)
		}
		if c.natsProxy != nil {
			c.natsProxy.Close()
		}
	}
	w.natsMu.Lock()
	if w.nats != nil {
		w.nats.Shutdown()
		w.nats = nil
	}
	w.natsMu.Unlock()
	if w.api != nil {
		w.api.Close()
	}
	if w.cp != nil {
		w.cp.Stop()
	}
}

func pool(n int) *v1alpha1.IPPool {
	i32 := func(v int32) *int32 { return &v }
	last := 10 + n - 1
	return &v1alpha1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: poolName},
		Spec: v1alpha1.IPPoolSpec{
			IPv4: &v1alpha1.Subnet{CIDR: "10.30.0.0/16", Gateway: "10.30.0.1",
				Ranges: []v1alpha1.IPRange{{Start: "10.30.0.10", End: fmt.Sprintf("10.30.%d.%d", last/256, last%256)}}},
			IPv6: &v1alpha1.Subnet{CIDR: "fd00:30::/64", Gateway: "fd00:30::1",
				Ranges: []v1alpha1.IPRange{{Start: "fd00:30::10", End: "fd00:30::ffff"}}},
			Warm: &v1alpha1.Warm{MinWarm: i32(1), WarmTarget: i32(2), MaxWarm: i32(8)},
		},
	}
}

func (w *world) natsAddr() string {
	// A NATS restart fault rewrites the port (to the same value) while
	// supervisors restart allocators.
	w.natsMu.Lock()
	defer w.natsMu.Unlock()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(w.natsPort))
}

// startNATS starts the bus, on port if non-zero (a restart keeps the
// address the components know).
func (w *world) startNATS(port int) error {
	srv, err := broker.StartServer(broker.ServerOptions{Port: port})
	if err != nil {
		return err
	}
	_, p, err := net.SplitHostPort(srv.ClientURL()[len("nats://"):])
	if err != nil {
		srv.Shutdown()
		return err
	}
	w.natsMu.Lock()
	defer w.natsMu.Unlock()
	w.nats = srv
	w.natsPort, _ = strconv.Atoi(p)
	return nil
}

// start runs a component's next incarnation.
func (w *world) start(c *component) error {
	metrics, err := child.FreeAddr()
	if err != nil {
		return err
	}
	if c.node != "" {
		w.armFailpoint(c)
	}
	c.mu.Lock()
	c.incarnation++
	name := fmt.Sprintf("%s.%d", c.name, c.incarnation)
	failpoint := c.failpoint
	c.failpoint = ""
	c.mu.Unlock()
	logDir := filepath.Join(w.dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	var p *child.Process
	if c.node == "" {
		p, err = child.Start(name, logDir, w.cfg.Binaries.Allocator,
			"--kubeconfig="+w.api.kubeconfig, "--nats-url=nats://"+w.natsAddr(), "--namespace=kube-system",
			"--lease-name="+electionLease, "--identity="+c.name, "--metrics-addr="+metrics, "--log-level=debug",
			"--leader-lease-duration="+leaseDuration.String(), "--leader-renew-deadline="+renewDeadline.String(),
			"--leader-retry-period="+retryPeriod.String(), "--node-loss-grace="+nodeLossGrace.String(),
			"--gc-interval="+gcInterval.String())
	} else {
		args := []string{"--node=" + c.node, "--socket=" + c.socket(), "--state=" + c.store(),
			"--nats-url=nats://" + c.natsProxy.Addr(), "--kubeconfig=" + w.cp.Kubeconfig(), "--metrics-addr=" + metrics,
			"--reuse-delay=" + reuseDelay.String(), "--miss-timeout=" + missTimeout.String(), "--gc-interval=" + gcInterval.String(), "--log-level=debug"}
		var env []string
		if failpoint != "" {
			env = []string{"WARMPOOL_FAILPOINT=" + failpoint}
		}
		p, err = child.StartEnv(name, logDir, env, w.cfg.Binaries.Agent, args...)
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.proc, c.metrics, c.killed, c.armed = p, "http://"+metrics, false, failpoint
	c.mu.Unlock()
	if failpoint != "" {
		w.log.add("start", "%s pid %d, failpoint %s armed", name, p.PID(), failpoint)
	} else {
		w.log.add("start", "%s pid %d", name, p.PID())
	}
	return nil
}

// supervise restarts c each time it exits, after a short random pause
// and once no fault holds it down. An agent's store is checked before its
// restart (invariant 4).
func (w *world) supervise(ctx context.Context, c *component) {
	for {
		p, _ := c.current()
		select {
		case <-ctx.Done():
			return
		case <-p.Done():
		}
		c.mu.Lock()
		killed, armed := c.killed, c.armed
		c.mu.Unlock()
		how := "exited"
		var ee *exec.ExitError
		switch {
		case killed:
			how = "killed by the suite"
		case armed != "" && errors.As(p.Err(), &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL:
			how = "killed itself at failpoint " + armed
			name, _, _ := strings.Cut(armed, ":")
			w.stats.count("fault:agent-failpoint(" + name + ")")
		}
		w.log.add("exit", "%s (%s): %v", p.Name, how, p.Err())
		if c.node != "" {
			w.checkStore(c)
		}
		if !w.waitReleased(ctx, c) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(w.between(100*time.Millisecond, 2*time.Second)):
		}
		if !w.waitReleased(ctx, c) { // a fault may have taken it during the pause
			return
		}
		if err := w.start(c); err != nil {
			w.fail(fmt.Errorf("restart %s: %w", c.name, err))
			return
		}
	}
}

// waitReleased waits until no fault holds c down; false if ctx ended.
func (w *world) waitReleased(ctx context.Context, c *component) bool {
	for {
		c.mu.Lock()
		held := c.held
		c.mu.Unlock()
		if held == 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// kill sends SIGKILL to c's process and waits until it is gone.
func (w *world) kill(c *component) {
	p, _ := c.current()
	if p == nil || p.Exited() {
		return
	}
	c.mu.Lock()
	c.killed = true
	c.mu.Unlock()
	_ = syscall.Kill(p.PID(), syscall.SIGKILL)
	<-p.Done()
}

func (c *component) hold() {
	c.mu.Lock()
	c.held++
	c.mu.Unlock()
}

func (c *component) release() {
	c.mu.Lock()
	c.held--
	c.mu.Unlock()
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

// agentState reads a running agent's record from its /state endpoint.
func agentState(ctx context.Context, c *component) (*agent.State, error) {
	p, base := c.current()
	if p == nil || p.Exited() {
		return nil, errDown
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+agent.StatePath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errDown, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s state: %s", c.name, resp.Status)
	}
	var st agent.State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("%s state: %w", c.name, err)
	}
	return &st, nil
}

var errDown = fmt.Errorf("agent not serving")

// readStore reads a stopped agent's bbolt record.
func readStore(c *component) (*store.Snapshot, error) {
	s, err := store.Open(c.store(), store.Options{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return s.Load()
}

// waitWarm waits until every agent serves and holds a warm unit.
func (w *world) waitWarm(ctx context.Context) error {
	deadline := time.Now().Add(time.Minute)
	for {
		cold := ""
		for _, c := range w.agents {
			st, err := agentState(ctx, c)
			if err != nil || st.Fenced != "" || !hasWarm(st) {
				cold = c.name
				break
			}
		}
		if cold == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s never held a warm unit", cold)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func hasWarm(st *agent.State) bool {
	for _, u := range st.Units {
		if u.State == store.Warm {
			return true
		}
	}
	return false
}

// leader returns the replica holding the election Lease, if its term has
// not expired.
func (w *world) leader(ctx context.Context) *component {
	l, err := w.kube.CoordinationV1().Leases("kube-system").Get(ctx, electionLease, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil || l.Spec.RenewTime == nil {
		return nil
	}
	if time.Since(l.Spec.RenewTime.Time) > leaseDuration {
		return nil
	}
	for _, c := range w.allocs {
		if strings.HasPrefix(*l.Spec.HolderIdentity, c.name+"_") {
			return c
		}
	}
	return nil
}

// persist retries one of the suite's own API operations through an
// apiserver restart: the suite's faults must not fail for the faults it
// injects.
func persist(ctx context.Context, what string, op func(context.Context) error) error {
	deadline := time.Now().Add(time.Minute)
	for {
		err := op(ctx)
		if err == nil || ctx.Err() != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w", what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// setReady sets a node's Ready condition, as the node-lifecycle
// controller (Unknown) or the node's kubelet (True) would.
func (w *world) setReady(ctx context.Context, node string, ready bool) error {
	status, reason := corev1.ConditionTrue, "KubeletReady"
	if !ready {
		status, reason = corev1.ConditionUnknown, "NodeStatusUnknown"
	}
	return persist(ctx, "set node "+node+" ready="+strconv.FormatBool(ready), func(ctx context.Context) error {
		n, err := w.kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		cond := corev1.NodeCondition{Type: corev1.NodeReady, Status: status, Reason: reason, LastHeartbeatTime: now, LastTransitionTime: now}
		found := false
		for i := range n.Status.Conditions {
			if n.Status.Conditions[i].Type == corev1.NodeReady {
				n.Status.Conditions[i], found = cond, true
			}
		}
		if !found {
			n.Status.Conditions = append(n.Status.Conditions, cond)
		}
		_, err = w.kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
}
