package inspect

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/pager"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/api/v1alpha1"
)

// Defaults of the gatherer's options: where warmpool's manifests put
// things.
const (
	DefaultNamespace     = "kube-system"
	DefaultAgentSelector = "app.kubernetes.io/name=warmpool-agent"
	DefaultAgentPort     = "metrics"
	DefaultElectionLease = "warmpool-allocator"
	DefaultTimeout       = 5 * time.Second
	DefaultParallel      = 16
)

// Options say where the gatherer finds warmpool's components.
type Options struct {
	// Namespace holds the agents' pods and the election Lease.
	Namespace string
	// AgentSelector selects the agents' pods (a label selector).
	AgentSelector string
	// AgentPort is the agents' metrics port: a container port's name, or
	// a number.
	AgentPort string
	// ElectionLease is the name of the allocator's election Lease.
	ElectionLease string
	// AgentURLs are agents not running as pods (dev rigs), by node: their
	// base URL (http://host:9420); they take the place of a pod found on
	// that node.
	AgentURLs map[string]string
	// Timeout bounds each request to an agent.
	Timeout time.Duration
	// Parallel bounds how many agents are read at once.
	Parallel int
	// GCInterval is the agents' leak-GC period (Snapshot.GCInterval).
	GCInterval time.Duration
}

func (o *Options) defaults() {
	o.Namespace = cmp.Or(o.Namespace, DefaultNamespace)
	o.AgentSelector = cmp.Or(o.AgentSelector, DefaultAgentSelector)
	o.AgentPort = cmp.Or(o.AgentPort, DefaultAgentPort)
	o.ElectionLease = cmp.Or(o.ElectionLease, DefaultElectionLease)
	o.Timeout = cmp.Or(o.Timeout, DefaultTimeout)
	o.Parallel = cmp.Or(o.Parallel, DefaultParallel)
}

// Need says what a command reads beyond pools, leases and nodes.
type Need struct {
	Election, Pods, Agents, Metrics bool
}

// PoolLister and LeaseLister are what the gatherer needs of warmpool's
// typed client (api/client), as interfaces so tests can fake them.
type PoolLister interface {
	List(ctx context.Context, opts metav1.ListOptions) (*v1alpha1.IPPoolList, error)
}

// LeaseLister lists NodeLeases.
type LeaseLister interface {
	List(ctx context.Context, opts metav1.ListOptions) (*v1alpha1.NodeLeaseList, error)
}

// Gatherer reads a Snapshot. It is safe for concurrent use once built:
// Gather does not write it.
type Gatherer struct {
	Kube   kubernetes.Interface
	Pools  PoolLister
	Leases LeaseLister
	// HTTP reaches agents given by URL; nil uses a client without
	// proxies from the environment's defaults.
	HTTP *http.Client
	Opts Options
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Gather reads the API's objects, then the agents, concurrently, each
// request within Opts.Timeout. An agent that cannot be read is recorded
// in its reading, not returned as an error: the error is for the API.
func (g *Gatherer) Gather(ctx context.Context, need Need) (*Snapshot, error) {
	// The defaults go into a copy: writing g.Opts here would race with
	// another Gather on the same Gatherer. The copy is shallow; AgentURLs
	// is only read.
	c := *g
	c.Opts.defaults()
	return c.gather(ctx, need)
}

func (g *Gatherer) gather(ctx context.Context, need Need) (*Snapshot, error) {
	now := g.Now
	if now == nil {
		now = time.Now
	}
	s := &Snapshot{GCInterval: g.Opts.GCInterval, ElectionRef: g.Opts.Namespace + "/" + g.Opts.ElectionLease}
	pools, err := g.Pools.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list IPPools: %w", err)
	}
	s.Pools = pools.Items
	leases, err := g.Leases.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list NodeLeases: %w", err)
	}
	s.Leases = leases.Items
	nodes, err := g.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	s.Nodes = nodes.Items
	if need.Election {
		l, err := g.Kube.CoordinationV1().Leases(g.Opts.Namespace).Get(ctx, g.Opts.ElectionLease, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return nil, fmt.Errorf("get the election Lease %s: %w", s.ElectionRef, err)
		default:
			s.Election = l
		}
		// The leader's term is judged at this reading, not at the end of
		// the gather: the pods' pages and the agents (up to Timeout each,
		// Parallel at a time) can take longer than a lease duration, and
		// the Lease would look unrenewed for that alone.
		s.ElectionAt = now()
	}
	if need.Pods {
		if s.Pods, err = g.listPods(ctx, metav1.NamespaceAll, metav1.ListOptions{}); err != nil {
			return nil, fmt.Errorf("list pods: %w", err)
		}
	}
	if need.Agents {
		if s.Agents, err = g.readAgents(ctx, need.Metrics); err != nil {
			return nil, err
		}
	}
	s.Now = now()
	s.Normalize()
	return s, nil
}

// listPods lists in pages of 500, so a large cluster's pods do not come
// in one response.
func (g *Gatherer) listPods(ctx context.Context, ns string, opts metav1.ListOptions) ([]corev1.Pod, error) {
	out := []corev1.Pod{} // read, if empty: not nil
	p := pager.New(func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return g.Kube.CoreV1().Pods(ns).List(ctx, o)
	})
	p.PageSize = 500
	err := p.EachListItem(ctx, opts, func(o runtime.Object) error {
		out = append(out, *o.(*corev1.Pod))
		return nil
	})
	return out, err
}

// agentTarget is one agent to read: a pod through the apiserver's proxy,
// or a URL.
type agentTarget struct {
	node string
	pod  *corev1.Pod
	port string // resolved container port number
	url  string
	// err: found, but cannot be read (no IP, no such port).
	err error
}

func (t agentTarget) source() string {
	if t.url != "" {
		return t.url
	}
	return fmt.Sprintf("pod %s/%s:%s", t.pod.Namespace, t.pod.Name, t.port)
}

// discover finds the agent of each node: the pods the selector selects
// (the newest running one when a node has several, as in a rolling
// update), then the URLs given, which take a pod's place.
func (g *Gatherer) discover(ctx context.Context) ([]agentTarget, error) {
	pods, err := g.listPods(ctx, g.Opts.Namespace, metav1.ListOptions{LabelSelector: g.Opts.AgentSelector})
	if err != nil {
		return nil, fmt.Errorf("list the agents' pods (%s in %s): %w", g.Opts.AgentSelector, g.Opts.Namespace, err)
	}
	best := map[string]*corev1.Pod{}
	for i := range pods {
		p := &pods[i]
		if p.Spec.NodeName == "" {
			continue
		}
		if cur := best[p.Spec.NodeName]; cur == nil || betterAgentPod(p, cur) {
			best[p.Spec.NodeName] = p
		}
	}
	var out []agentTarget
	for node, p := range best {
		if _, ok := g.Opts.AgentURLs[node]; ok {
			continue
		}
		t := agentTarget{node: node, pod: p}
		t.port, t.err = resolvePort(p, g.Opts.AgentPort)
		if t.err == nil && p.Status.PodIP == "" {
			t.err = fmt.Errorf("pod %s/%s has no IP yet (phase %s)", p.Namespace, p.Name, p.Status.Phase)
		}
		out = append(out, t)
	}
	for node, u := range g.Opts.AgentURLs {
		out = append(out, agentTarget{node: node, url: strings.TrimRight(u, "/")})
	}
	slices.SortFunc(out, func(a, b agentTarget) int { return cmp.Compare(a.node, b.node) })
	return out, nil
}

// betterAgentPod prefers a pod not being deleted, running, then the
// newest.
func betterAgentPod(p, than *corev1.Pod) bool {
	score := func(p *corev1.Pod) int {
		s := 0
		if p.DeletionTimestamp == nil {
			s += 2
		}
		if p.Status.Phase == corev1.PodRunning {
			s++
		}
		return s
	}
	if a, b := score(p), score(than); a != b {
		return a > b
	}
	return p.CreationTimestamp.After(than.CreationTimestamp.Time)
}

// resolvePort returns the container port number the pod proxy needs:
// the apiserver takes "pod:port" literally and does not resolve a port's
// name.
func resolvePort(p *corev1.Pod, port string) (string, error) {
	if n, err := strconv.Atoi(port); err == nil && n > 0 && n < 65536 {
		return port, nil
	}
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == port {
				return strconv.Itoa(int(cp.ContainerPort)), nil
			}
		}
	}
	return "", fmt.Errorf("pod %s/%s has no container port named %q", p.Namespace, p.Name, port)
}

func (g *Gatherer) readAgents(ctx context.Context, metrics bool) ([]AgentReading, error) {
	targets, err := g.discover(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]AgentReading, len(targets))
	sem := make(chan struct{}, g.Opts.Parallel)
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			out[i] = g.readAgent(ctx, t, metrics)
		})
	}
	wg.Wait()
	return out, nil
}

// Accept asks for Prometheus' text format: the agents' handler would
// otherwise negotiate what the client-go default accepts.
const acceptMetrics = "text/plain;version=0.0.4"

func (g *Gatherer) readAgent(ctx context.Context, t agentTarget, metrics bool) AgentReading {
	r := AgentReading{Node: t.node}
	if t.err != nil {
		r.Source, r.StateError = t.node, t.err.Error()
		if t.pod != nil {
			r.Source = fmt.Sprintf("pod %s/%s", t.pod.Namespace, t.pod.Name)
		}
		return r
	}
	r.Source = t.source()
	body, err := g.fetch(ctx, t, agent.StatePath, "application/json")
	if err == nil {
		r.State, err = ParseState(body, t.node)
	}
	if err != nil {
		r.StateError = fmt.Sprintf("GET %s: %v", agent.StatePath, err)
	}
	if !metrics || r.State == nil {
		return r // an agent that did not answer is not asked twice
	}
	body, err = g.fetch(ctx, t, "/metrics", acceptMetrics)
	if err == nil {
		r.Metrics, err = ParseMetrics(body)
	}
	if err != nil {
		r.MetricsError = fmt.Sprintf("GET /metrics: %v", err)
	}
	return r
}

// fetch GETs path of an agent within the per-request timeout, reading at
// most MaxBody+1 bytes (ParseState refuses more).
func (g *Gatherer) fetch(ctx context.Context, t agentTarget, path, accept string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, g.Opts.Timeout)
	defer cancel()
	var body io.ReadCloser
	if t.url != "" {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.url+path, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept", accept)
		hc := g.HTTP
		if hc == nil {
			hc = http.DefaultClient
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))
		}
		body = resp.Body
	} else {
		// Through the apiserver's pod proxy, with the CLI's own
		// credentials: no port-forward, no route to the pod network
		// needed (RBAC: get pods/proxy).
		rc, err := g.Kube.CoreV1().RESTClient().Get().Namespace(t.pod.Namespace).Resource("pods").
			Name(t.pod.Name+":"+t.port).SubResource("proxy").Suffix(path).SetHeader("Accept", accept).Stream(ctx)
		if err != nil {
			return nil, err
		}
		body = rc
	}
	defer body.Close()
	b, err := io.ReadAll(io.LimitReader(body, MaxBody+1))
	if err != nil {
		return nil, fmt.Errorf("read the answer: %w", err)
	}
	return b, nil
}
