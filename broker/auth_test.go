package broker_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/allocator"
	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/rig/controlplane"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// authRig is an embedded server that authenticates agents by their
// service-account tokens against a real apiserver, with the real
// allocator serving it.
type authRig struct {
	kube     kubernetes.Interface
	srv      *broker.Server
	reviewer *broker.TokenReviewer
	admin    *nats.Conn // the allocator's connection
	alloc    *allocator.Allocator
	// tokens bound to the agents' pods, by name
	tokens map[string]string
}

const agentNS = "default"

func newAuthRig(t *testing.T, ctx context.Context) *authRig {
	t.Helper()
	rc := testenv.APIServerWithCRDs(t)
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := client.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	r := &authRig{kube: kube, tokens: map[string]string{}}
	if _, err := cs.IPPools().Create(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"},
		Spec: v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: "10.0.0.0/24"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"node-a", "node-b"} {
		if err := controlplane.RegisterNode(ctx, kube, n, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, sa := range []string{"warmpool-agent", "intruder"} {
		if _, err := kube.CoreV1().ServiceAccounts(agentNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// name: pod, its node, its service account, the token's audience
	// ("" binds no pod)
	for _, p := range []struct{ name, pod, node, sa, audience string }{
		{"a", "agent-a", "node-a", "warmpool-agent", broker.DefaultAgentAudience},
		{"a2", "agent-a", "node-a", "warmpool-agent", broker.DefaultAgentAudience},
		{"b", "agent-b", "node-b", "warmpool-agent", broker.DefaultAgentAudience},
		{"wrong-audience", "agent-a", "node-a", "warmpool-agent", "https://kubernetes.default.svc.cluster.local"},
		{"intruder", "intruder-a", "node-a", "intruder", broker.DefaultAgentAudience},
		{"gone", "agent-gone", "node-a", "warmpool-agent", broker.DefaultAgentAudience},
		{"unbound", "", "", "warmpool-agent", broker.DefaultAgentAudience},
	} {
		spec := authnv1.TokenRequestSpec{Audiences: []string{p.audience}}
		if p.pod != "" {
			pod, err := kube.CoreV1().Pods(agentNS).Get(ctx, p.pod, metav1.GetOptions{})
			if err != nil {
				pod, err = kube.CoreV1().Pods(agentNS).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.pod},
					Spec: corev1.PodSpec{NodeName: p.node, ServiceAccountName: p.sa, Containers: []corev1.Container{{Name: "agent", Image: "warmpool-agent"}}}},
					metav1.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
			}
			spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
		}
		tr, err := kube.CoreV1().ServiceAccounts(agentNS).CreateToken(ctx, p.sa, &authnv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		r.tokens[p.name] = tr.Status.Token
	}
	zero := int64(0)
	if err := kube.CoreV1().Pods(agentNS).Delete(ctx, "agent-gone", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}

	log := testenv.Logger(t)
	r.reviewer, err = broker.NewTokenReviewer(kube, broker.TokenReviewerOptions{ServiceAccount: agentNS + "/warmpool-agent", RefusalTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.reviewer.Close)
	r.srv, err = broker.StartServer(broker.ServerOptions{Auth: broker.NewServerAuth(r.reviewer, log), Logger: log.With("component", "nats")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.srv.Shutdown)
	if r.admin, err = r.srv.Connect(ctx, "warmpool-allocator"); err != nil {
		t.Fatalf("the allocator's own credential: %v", err)
	}
	t.Cleanup(r.admin.Close)
	if r.alloc, err = allocator.New(ctx, allocator.Config{Client: cs, Bus: broker.NATS(r.admin), Epoch: 1, Logger: log.With("component", "allocator"),
		PlanInterval: 200 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if err := r.alloc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.alloc.Stop)
	return r
}

// connectAgent connects as node's agent does: its token from a file,
// re-read at every connection, and replies to its own inbox.
func (r *authRig) connectAgent(t *testing.T, ctx context.Context, name, node, token string, extra ...nats.Option) (*nats.Conn, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := broker.ClientAuth{TokenFile: file}.Options()
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, nats.CustomInboxPrefix(broker.AgentInboxPrefix(node)))
	return broker.Connect(ctx, r.srv.ClientURL(), name, append(opts, extra...)...)
}

// asyncErrors collects a connection's asynchronous errors (permission
// violations).
type asyncErrors struct {
	mu   sync.Mutex
	errs []string
}

func (a *asyncErrors) handler() nats.Option {
	return nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		a.mu.Lock()
		a.errs = append(a.errs, err.Error())
		a.mu.Unlock()
	})
}

// waitFor waits until an error containing want arrived.
func (a *asyncErrors) waitFor(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		a.mu.Lock()
		for _, e := range a.errs {
			if strings.Contains(e, want) {
				a.mu.Unlock()
				return
			}
		}
		a.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	t.Fatalf("no asynchronous error %q from the server; got %q", want, a.errs)
}

// TestAgentAuthentication runs the embedded server with agent
// authentication (TokenReview of pod-bound service-account tokens) and
// the real allocator, and tries every way in, legitimate or not.
func TestAgentAuthentication(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := newAuthRig(t, ctx)

	// The real agent of node-a, on a connection authenticated by its
	// pod's token, syncs with the allocator and gets the pool's warm
	// floor pushed as grants on its own subject.
	t.Run("AgentServedOnItsOwnSubjects", func(t *testing.T) {
		conn, err := r.connectAgent(t, ctx, "warmpool-agent-node-a", "node-a", r.tokens["a"])
		if err != nil {
			t.Fatalf("node-a's agent with its own token: %v", err)
		}
		defer conn.Close()
		s, err := store.Open(filepath.Join(t.TempDir(), "agent.db"), store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		a, err := agent.New(agent.Config{Node: "node-a", Store: s, Resolver: agent.StaticResolver{Default: "p", Known: map[string]bool{"p": true}},
			Logger: testenv.Logger(t).With("component", "agent")})
		if err != nil {
			t.Fatal(err)
		}
		bus := agent.NewBus(a, broker.NATS(conn), 2*time.Second)
		bctx, bcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- bus.Run(bctx) }()
		defer func() { bcancel(); <-done }()
		deadline := time.Now().Add(20 * time.Second)
		for len(a.Held()) < int(v1alpha1.DefaultMinWarm) || bus.Fencing() != nil {
			if time.Now().After(deadline) {
				t.Fatalf("node-a's agent holds %v (fencing: %v): want the pool's warm floor granted after a sync", a.Held(), bus.Fencing())
			}
			time.Sleep(50 * time.Millisecond)
		}
		// A miss: a request on its own subject, answered on its own inbox.
		units, _, _, err := bus.Miss(ctx, "p", 1)
		if err != nil || len(units) != 1 {
			t.Fatalf("node-a's miss: %v %v", units, err)
		}
	})

	// node-a's credential cannot publish on node-b's subjects (a forged
	// report or sync) nor on any node's grant subject (a forged grant with
	// a high epoch), nor listen to node-b's grants or to others' replies:
	// the server refuses it, and nothing reaches the allocator.
	t.Run("AnotherNodesSubjectsRefusedByTheServer", func(t *testing.T) {
		var errs asyncErrors
		conn, err := r.connectAgent(t, ctx, "agent-a-raw", "node-a", r.tokens["a"], errs.handler())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		spy, err := r.admin.SubscribeSync("warmpool.v1.>")
		if err != nil {
			t.Fatal(err)
		}
		defer spy.Unsubscribe()
		if err := r.admin.Flush(); err != nil {
			t.Fatal(err)
		}
		forged := broker.Encode(&broker.SyncRequest{V: broker.ProtocolVersion, Node: "node-b", Run: "forged", Seq: 1})
		if _, err := conn.Request(broker.SubjectSyncFrom("node-b"), forged, 500*time.Millisecond); err == nil {
			t.Fatal("node-a's forged sync of node-b was answered")
		}
		errs.waitFor(t, `Permissions Violation for Publish to "warmpool.v1.agent.node-b.sync"`)
		grant := broker.Encode(&broker.Grant{V: broker.ProtocolVersion, Epoch: 1 << 40, Node: "node-b", Pool: broker.PoolInfo{Name: "p"}})
		if err := conn.Publish(broker.SubjectGrant("node-b"), grant); err != nil {
			t.Fatal(err)
		}
		errs.waitFor(t, `Permissions Violation for Publish to "warmpool.v1.node.node-b.grant"`)
		if err := conn.Publish(broker.SubjectGrant("node-a"), grant); err != nil {
			t.Fatal(err)
		}
		errs.waitFor(t, `Permissions Violation for Publish to "warmpool.v1.node.node-a.grant"`)
		if m, err := spy.NextMsg(300 * time.Millisecond); err == nil {
			t.Fatalf("a message of node-a's forgeries got through: %s %s", m.Subject, m.Data)
		}

		for _, subject := range []string{broker.SubjectGrant("node-b"), "_INBOX.>", broker.AgentInboxPrefix("node-b") + ".>", ">"} {
			sub, err := conn.SubscribeSync(subject)
			if err != nil {
				t.Fatal(err)
			}
			errs.waitFor(t, `Permissions Violation for Subscription to "`+subject+`"`)
			if err := r.admin.Publish(strings.ReplaceAll(strings.ReplaceAll(subject, ">", "x"), "*", "x"), []byte("{}")); err != nil {
				t.Fatal(err)
			}
			if m, err := sub.NextMsg(200 * time.Millisecond); err == nil {
				t.Fatalf("node-a heard %s on %s", m.Data, m.Subject)
			}
		}

		// Its own subjects, as a reference: the allocator hears it, and
		// node-a hears and answers the allocator's requests.
		gsub, err := conn.Subscribe(broker.SubjectRevoke("node-a"), func(m *nats.Msg) {
			_ = m.Respond(broker.Encode(&broker.Revoked{V: broker.ProtocolVersion}))
		})
		if err != nil {
			t.Fatal(err)
		}
		defer gsub.Unsubscribe()
		if err := conn.Flush(); err != nil {
			t.Fatal(err)
		}
		if _, err := r.admin.Request(broker.SubjectRevoke("node-a"), broker.Encode(&broker.Revoke{V: broker.ProtocolVersion, Epoch: 1, Pool: "p"}), 2*time.Second); err != nil {
			t.Fatalf("node-a does not answer the allocator's request on its own subject: %v", err)
		}
		own := broker.Encode(&broker.SyncRequest{V: broker.ProtocolVersion, Node: "node-a", Run: "raw", Seq: 1})
		resp, err := conn.Request(broker.SubjectSyncFrom("node-a"), own, 5*time.Second)
		if err != nil {
			t.Fatalf("node-a's sync on its own subject: %v", err)
		}
		var reply broker.SyncReply
		if err := broker.Decode(resp.Data, &reply); err != nil || reply.Error != "" {
			t.Fatalf("node-a's sync on its own subject: %+v %v", reply, err)
		}
	})

	// On its own subject, a body that speaks for node-b is refused by the
	// allocator and counted.
	t.Run("AnotherNodeInTheBodyRefusedByTheAllocator", func(t *testing.T) {
		conn, err := r.connectAgent(t, ctx, "agent-a-liar", "node-a", r.tokens["a"])
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		for subject, body := range map[string]any{
			broker.SubjectSyncFrom("node-a"):   &broker.SyncRequest{V: broker.ProtocolVersion, Node: "node-b", Run: "lie", Seq: 1},
			broker.SubjectReportFrom("node-a"): &broker.Report{V: broker.ProtocolVersion, Node: "node-b", Run: "lie", Seq: 2},
			broker.SubjectMissFrom("node-a"):   &broker.MissRequest{V: broker.ProtocolVersion, Node: "node-b", Pool: "p", Count: 1},
		} {
			resp, err := conn.Request(subject, broker.Encode(body), 5*time.Second)
			if err != nil {
				t.Fatalf("%s: %v", subject, err)
			}
			var reply broker.MissReply
			if err := broker.Decode(resp.Data, &reply); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(reply.Error, `names node "node-b"`) || len(reply.Units) != 0 {
				t.Fatalf("%s with a body of node-b: %+v, want a refusal", subject, reply)
			}
		}
		if n := refused(t, r.alloc); n != 3 {
			t.Fatalf("warmpool_allocator_bus_refused_total = %v, want 3", n)
		}
	})

	// Credentials that are not an agent's token bound to its pod, with the
	// bus's audience, of the agents' service account, are refused at
	// connect; so is a client with none, or a wrong allocator password.
	t.Run("BadCredentialsRefusedAtConnect", func(t *testing.T) {
		a := r.tokens["a"]
		tampered := a[:len(a)-4] + map[bool]string{true: "AAAA", false: "BBBB"}[!strings.HasSuffix(a, "AAAA")]
		for name, opt := range map[string]nats.Option{
			"wrong audience":             nats.Token(r.tokens["wrong-audience"]),
			"bad signature":              nats.Token(tampered),
			"garbage":                    nats.Token("not-a-token"),
			"pod deleted":                nats.Token(r.tokens["gone"]),
			"another service account":    nats.Token(r.tokens["intruder"]),
			"not bound to a pod":         nats.Token(r.tokens["unbound"]),
			"wrong allocator password":   nats.UserInfo("warmpool-allocator", "guess"),
			"an agent's token as a user": nats.UserInfo("node-a", a),
			"no credential":              nats.Name("anonymous"),
		} {
			cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
			conn, err := broker.Connect(cctx, r.srv.ClientURL(), "bad", opt)
			ccancel()
			if err == nil {
				conn.Close()
				t.Errorf("%s: connected", name)
				continue
			}
			if !errors.Is(err, nats.ErrAuthorization) {
				t.Errorf("%s: %v, want an authorization violation", name, err)
			}
		}
	})

	// An accepted token is reviewed once for many connections; a refused
	// one is refused again without a review for a moment only.
	t.Run("ReviewsCachedRefusalsBriefly", func(t *testing.T) {
		conn, err := r.connectAgent(t, ctx, "agent-b", "node-b", r.tokens["b"])
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		r.reviewer.WaitCache()
		n := r.reviewer.ReviewCount()
		if conn, err = r.connectAgent(t, ctx, "agent-b", "node-b", r.tokens["b"]); err != nil {
			t.Fatal(err)
		}
		conn.Close()
		if got := r.reviewer.ReviewCount(); got != n {
			t.Fatalf("a second connection with an accepted token made %d reviews, want 0", got-n)
		}
		bad := func() {
			if conn, err := broker.Connect(ctx, r.srv.ClientURL(), "bad", nats.Token(r.tokens["intruder"])); err == nil {
				conn.Close()
				t.Fatal("the intruder connected")
			}
		}
		bad()
		r.reviewer.WaitCache()
		n = r.reviewer.ReviewCount()
		bad()
		if got := r.reviewer.ReviewCount(); got != n {
			t.Fatalf("a refused token, again at once: %d reviews, want 0 (refusal cached)", got-n)
		}
		time.Sleep(1200 * time.Millisecond) // the refusal TTL
		bad()
		if got := r.reviewer.ReviewCount(); got != n+1 {
			t.Fatalf("a refused token, again after the refusal TTL: %d reviews, want 1", got-n)
		}
	})

	// The agent re-reads its token file at every reconnection: the
	// kubelet rotates a projected token on disk.
	t.Run("TokenFileReReadOnReconnect", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(file, []byte(r.tokens["a"]), 0o600); err != nil {
			t.Fatal(err)
		}
		opts, err := broker.ClientAuth{TokenFile: file}.Options()
		if err != nil {
			t.Fatal(err)
		}
		var errs asyncErrors
		reconnected := make(chan struct{}, 1)
		opts = append(opts, nats.CustomInboxPrefix(broker.AgentInboxPrefix("node-a")), errs.handler(),
			nats.ReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} }))
		conn, err := broker.Connect(ctx, r.srv.ClientURL(), "agent-rotating", opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// The token on disk goes bad: reconnections are refused...
		if err := os.WriteFile(file, []byte("revoked"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := r.srv.Kick("agent-rotating"); err != nil {
			t.Fatal(err)
		}
		errs.waitFor(t, "authorization violation")
		select {
		case <-reconnected:
			t.Fatal("reconnected with a bad token on disk")
		default:
		}
		// ...until the kubelet writes the new one, which is used.
		if err := os.WriteFile(file, []byte(r.tokens["a2"]), 0o600); err != nil {
			t.Fatal(err)
		}
		select {
		case <-reconnected:
		case <-time.After(10 * time.Second):
			t.Fatal("no reconnection with the rotated token")
		}
	})
}

// refused reads the allocator's warmpool_allocator_bus_refused_total.
func refused(t *testing.T, a *allocator.Allocator) float64 {
	t.Helper()
	mfs, err := a.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == "warmpool_allocator_bus_refused_total" {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}
