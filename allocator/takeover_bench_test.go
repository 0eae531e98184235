package allocator

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/rig/controlplane"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// Takeover sizes: 2 pools, each node holding 4 warm units of each in its
// NodeLease, as a cluster the previous leader kept warm.
const (
	takeoverPools        = 2
	takeoverUnitsPerNode = 4
)

// BenchmarkTakeover measures a new leader's takeover on a real apiserver
// holding Ready Nodes and their NodeLeases (2 pools, 4 warm units each):
// from allocator.New to the answer of its first grant (a miss of node-0,
// over the in-memory bus), with the API client the allocator binary uses
// by default (100 QPS, burst 200). Each iteration is one takeover by a
// successor of the last, over the same leases. It reports the time per
// takeover and the NodeLease writes it made (fencing, claiming and the
// grant).
//
//	go test ./allocator -run XXX -bench Takeover -benchtime 3x
func BenchmarkTakeover(b *testing.B) {
	for _, nodes := range []int{100, 1000} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) { benchTakeover(b, nodes) })
	}
}

func benchTakeover(b *testing.B, nodes int) {
	rc := testenv.APIServerWithCRDs(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	fast := rest.CopyConfig(rc)
	fast.QPS, fast.Burst = 2000, 4000
	setupCS, err := client.New(fast)
	if err != nil {
		b.Fatal(err)
	}
	setupKube := kubernetes.NewForConfigOrDie(fast)
	// Each pool is big enough for the warm units plus free ones to grant.
	bits := 32 - 1
	for 1<<(32-bits) < nodes*takeoverUnitsPerNode*2 {
		bits--
	}
	pools := make([]string, takeoverPools)
	for p := range pools {
		pools[p] = fmt.Sprintf("p%d", p)
		cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(p), 0, 0}), bits)
		if _, err := setupCS.IPPools().Create(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: pools[p]},
			Spec: v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: cidr.String()}}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	setupNode := func(i int) error {
		node := fmt.Sprintf("node-%04d", i)
		if err := controlplane.RegisterNode(ctx, setupKube, node, nil); err != nil {
			return err
		}
		for p, pool := range pools {
			units := make([]v1alpha1.LeasedUnit, takeoverUnitsPerNode)
			for u := range units {
				n := 1 + i*takeoverUnitsPerNode + u
				units[u] = v1alpha1.LeasedUnit{IPv4: netip.AddrFrom4([4]byte{10, byte(p), byte(n >> 8), byte(n)}).String()}
			}
			if _, err := setupCS.NodeLeases().Create(ctx, &v1alpha1.NodeLease{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.NodeLeaseName(pool, node)},
				Spec: v1alpha1.NodeLeaseSpec{Pool: pool, Node: node, Epoch: 1, Units: units}}, metav1.CreateOptions{}); err != nil {
				return err
			}
		}
		return nil
	}
	var g errgroup.Group
	g.SetLimit(32)
	for i := range nodes {
		g.Go(func() error { return setupNode(i) })
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}

	var writes atomic.Int64 // NodeLease writes: fencing, claiming, the grant
	measured := rest.CopyConfig(rc)
	measured.QPS, measured.Burst = 100, 200
	measured.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if r.Method != http.MethodGet && strings.Contains(r.URL.Path, "/nodeleases") {
				writes.Add(1)
			}
			return rt.RoundTrip(r)
		})
	}
	net := broker.NewNetwork()
	agent := net.Endpoint("agent-node-0000")
	miss := broker.Encode(&broker.MissRequest{V: broker.ProtocolVersion, Node: "node-0000", Pool: pools[0], Count: 1})
	var total time.Duration
	b.ResetTimer()
	writes.Store(0)
	for i := range b.N {
		// A successor's own clients: their rate limiters start full, as a
		// standby's idle ones would.
		b.StopTimer()
		cs, err := client.New(measured)
		if err != nil {
			b.Fatal(err)
		}
		kube := kubernetes.NewForConfigOrDie(measured)
		b.StartTimer()
		start := time.Now()
		a, err := New(ctx, Config{Client: cs, Kube: kube, Bus: net.Endpoint(fmt.Sprintf("allocator-%d", i)), Epoch: uint64(2 + i),
			PlanInterval: time.Hour, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Start(ctx); err != nil {
			b.Fatal(err)
		}
		var reply broker.MissReply
		for {
			data, err := agent.Request(ctx, broker.SubjectMissFrom("node-0000"), miss)
			if err != nil {
				b.Fatal(err)
			}
			if err := broker.Decode(data, &reply); err != nil {
				b.Fatal(err)
			}
			if !reply.Retry {
				break
			}
		}
		if reply.Error != "" || len(reply.Units) != 1 {
			b.Fatalf("first grant: %+v", reply)
		}
		total += time.Since(start)
		b.StopTimer()
		done := writes.Load()
		a.Stop()
		writes.Store(done) // what the stop writes is not the takeover's
		b.StartTimer()
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s/takeover")
	b.ReportMetric(float64(writes.Load())/float64(b.N), "writes/takeover")
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
