package inspect

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/api/v1alpha1"
)

type fakePools []v1alpha1.IPPool

func (f fakePools) List(context.Context, metav1.ListOptions) (*v1alpha1.IPPoolList, error) {
	return &v1alpha1.IPPoolList{Items: f}, nil
}

type fakeLeases []v1alpha1.NodeLease

func (f fakeLeases) List(context.Context, metav1.ListOptions) (*v1alpha1.NodeLeaseList, error) {
	return &v1alpha1.NodeLeaseList{Items: f}, nil
}

func agentPod(name, nodeName, ip string, phase corev1.PodPhase, created time.Time, ports ...corev1.ContainerPort) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: name, Labels: map[string]string{"app.kubernetes.io/name": "warmpool-agent"},
			CreationTimestamp: metav1.NewTime(created)},
		Spec:   corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "agent", Ports: ports}}},
		Status: corev1.PodStatus{Phase: phase, PodIP: ip},
	}
}

// TestGatherReadsAgentsAndReportsTheUnreadable: agents given by URL,
// one answering, one answering 500, one answering garbage, one slower
// than the timeout, one not listening. None stops the others.
func TestGatherReadsAgentsAndReportsTheUnreadable(t *testing.T) {
	s := clean()
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case agent.StatePath:
			_ = json.NewEncoder(w).Encode(s.agentOf("n1").State)
		case "/metrics":
			if !strings.HasPrefix(r.Header.Get("Accept"), "text/plain") {
				t.Errorf("metrics asked with Accept %q", r.Header.Get("Accept"))
			}
			_, _ = w.Write([]byte("# TYPE warmpool_agent_units gauge\nwarmpool_agent_units{pool=\"dual\",state=\"warm\"} 1\n" +
				"warmpool_agent_cache_hits_total{pool=\"dual\"} 9\n"))
		default:
			http.NotFound(w, r)
		}
	}))
	defer good.Close()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "read the agent's record: bolt: timeout", http.StatusInternalServerError)
	}))
	defer failing.Close()
	garbage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"node":"n3","units":[{"pool":`))
	}))
	defer garbage.Close()
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(release)
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close()

	g := &Gatherer{Kube: fake.NewClientset(), Pools: fakePools(s.Pools), Leases: fakeLeases(s.Leases), Now: func() time.Time { return now },
		Opts: Options{Timeout: 300 * time.Millisecond, AgentURLs: map[string]string{
			"n1": good.URL + "/", "n2": failing.URL, "n3": garbage.URL, "n4": slow.URL, "n5": downURL,
		}}}
	start := time.Now()
	snap, err := g.Gather(context.Background(), Need{Agents: true, Metrics: true, Pods: true, Election: true})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("gathering took %s: agents not read concurrently within their timeout", took)
	}
	if len(snap.Agents) != 5 || snap.Election != nil || snap.Pods == nil || len(snap.Pools) != 1 || len(snap.Leases) != 2 {
		t.Fatalf("snapshot %+v", snap)
	}
	n1 := snap.agentOf("n1")
	if n1.State == nil || len(n1.State.Units) != 2 || n1.Metrics == nil || n1.Metrics.Hits["dual"] != 9 || n1.Source != good.URL {
		t.Errorf("n1 %+v", n1)
	}
	for node, want := range map[string]string{"n2": "500 Internal Server Error: read the agent's record", "n3": "not an agent record", "n4": "deadline exceeded", "n5": "connection refused"} {
		r := snap.agentOf(node)
		if r.State != nil || !strings.Contains(r.StateError, want) {
			t.Errorf("%s: state %+v, error %q, want one with %q", node, r.State, r.StateError, want)
		}
	}
	// The doctor reports each unreachable agent and carries on.
	r := Doctor(snap)
	unreachable := 0
	for _, f := range r.Findings {
		if f.Kind == KindAgentUnreachable {
			unreachable++
		}
	}
	if unreachable != 4 {
		t.Errorf("%d agents reported unreachable, want 4: %v", unreachable, kindsOf(r))
	}
}

func TestDiscoverAgentPods(t *testing.T) {
	metrics := corev1.ContainerPort{Name: "metrics", ContainerPort: 9420}
	old, newer := now.Add(-time.Hour), now
	deleting := agentPod("agent-n1-old", "n1", "10.0.0.1", corev1.PodRunning, newer, metrics)
	deleting.DeletionTimestamp = &metav1.Time{Time: now}
	deleting.Finalizers = []string{"x"}
	objs := []runtime.Object{
		agentPod("agent-n1", "n1", "10.0.0.1", corev1.PodRunning, old, metrics),
		deleting,
		agentPod("agent-n2", "n2", "", corev1.PodPending, old, metrics),
		agentPod("agent-n3", "n3", "10.0.0.3", corev1.PodRunning, old, corev1.ContainerPort{Name: "http", ContainerPort: 80}),
		agentPod("agent-n4", "n4", "10.0.0.4", corev1.PodRunning, old, metrics),
		agentPod("agent-unscheduled", "", "", corev1.PodPending, old, metrics),
	}
	other := agentPod("not-an-agent", "n1", "10.0.0.9", corev1.PodRunning, newer, metrics)
	other.Labels = nil
	objs = append(objs, other)
	g := &Gatherer{Kube: fake.NewClientset(objs...), Opts: Options{AgentURLs: map[string]string{"n4": "http://192.0.2.4:9420"}}}
	g.Opts.defaults()
	targets, err := g.discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, tg := range targets {
		switch {
		case tg.err != nil:
			got[tg.node] = "error: " + tg.err.Error()
		default:
			got[tg.node] = tg.source()
		}
	}
	want := map[string]string{
		"n1": "pod kube-system/agent-n1:9420",
		"n2": "error: pod kube-system/agent-n2 has no IP yet (phase Pending)",
		"n3": `error: pod kube-system/agent-n3 has no container port named "metrics"`,
		"n4": "http://192.0.2.4:9420",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("targets %v", got)
	}
	g.Opts.AgentPort = "9999"
	p, _ := resolvePort(objs[0].(*corev1.Pod), g.Opts.AgentPort)
	if p != "9999" {
		t.Errorf("a numeric port is taken as it is: %q", p)
	}
}

// TestGatherJudgesTheLeaderWhenItReadsTheLease: reading every pod and
// every agent of a large or partly down cluster takes longer than the
// election Lease's term (agents answer within 5 s each, 16 at a time);
// the Lease, renewed 2 s before it was read, is not stale for that.
func TestGatherJudgesTheLeaderWhenItReadsTheLease(t *testing.T) {
	s := clean()
	var mu sync.Mutex
	clock := now
	kube := fake.NewClientset(s.Election)
	kube.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		clock = clock.Add(20 * time.Second) // a slow page of pods, a slow round of agents
		return false, nil, nil
	})
	g := &Gatherer{Kube: kube, Pools: fakePools(s.Pools), Leases: fakeLeases(s.Leases), Now: func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return clock
	}}
	snap, err := g.Gather(context.Background(), Need{Election: true, Pods: true, Agents: true})
	if err != nil {
		t.Fatal(err)
	}
	if e := Election(snap); !e.Found || e.Expired || e.SinceRenew == nil || *e.SinceRenew != 2*time.Second {
		t.Errorf("a Lease renewed 2 s before it was read, judged after a 40 s gather: %+v", e)
	}
	if r := Doctor(snap); slices.Contains(kindsOf(r), KindLeaderStale) {
		t.Errorf("findings %v: the leader called stale for a slow gather", kindsOf(r))
	}
}

// TestGatherLeavesTheGathererAlone: one Gatherer serves concurrent
// Gathers (go test -race), and its options stay as they were given.
func TestGatherLeavesTheGathererAlone(t *testing.T) {
	s := clean()
	g := &Gatherer{Kube: fake.NewClientset(s.Election), Pools: fakePools(s.Pools), Leases: fakeLeases(s.Leases)}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			snap, err := g.Gather(context.Background(), Need{Election: true, Agents: true})
			if err != nil {
				t.Error(err)
				return
			}
			if snap.ElectionRef != "kube-system/warmpool-allocator" || snap.Election == nil {
				t.Errorf("the defaults were not applied: %q, %v", snap.ElectionRef, snap.Election)
			}
		})
	}
	wg.Wait()
	if !reflect.DeepEqual(g.Opts, Options{}) {
		t.Errorf("Gather wrote the Gatherer's options: %+v", g.Opts)
	}
}
