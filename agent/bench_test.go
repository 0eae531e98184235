package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// latencies collects per-operation durations and reports percentiles.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) report(b *testing.B) {
	slices.Sort(l.d)
	if len(l.d) == 0 {
		return
	}
	at := func(q float64) float64 { return float64(l.d[int(q*float64(len(l.d)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(at(0.5), "p50-ms")
	b.ReportMetric(at(0.99), "p99-ms")
}

// servingAgent starts an agent with n warm dual-stack units on a socket.
func servingAgent(b *testing.B, n int) string {
	b.Helper()
	dir := b.TempDir()
	s, err := store.Open(filepath.Join(dir, "agent.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	a, err := agent.New(agent.Config{Node: "bench", Store: s, Logger: slog.New(slog.DiscardHandler),
		Resolver: agent.StaticResolver{Known: map[string]bool{"dual": true}}})
	if err != nil {
		b.Fatal(err)
	}
	units := make([]store.Unit, n)
	for i := range units {
		v4 := fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		units[i] = store.Unit{Pool: "dual", ID: v4, IPv4: v4, IPv6: fmt.Sprintf("fd00::%x", i)}
	}
	if err := a.Grant(store.Pool{Name: "dual", Prefix4: 8, Prefix6: 64}, units, 0); err != nil {
		b.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	srv, err := agent.Listen(a, sock)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	return sock
}

// BenchmarkWarmHitAdd: a warm-hit ADD as the agent serves it over its
// socket (the plugin's framing and client, the agent's CNI layer), the
// bbolt commit (fsync) included, the plugin's process start not. Run with -cpu 1,2: parallel ADDs share commits.
//
//	go test ./agent -run XXX -bench WarmHitAdd -cpu 1,2 -benchtime 3000x
func BenchmarkWarmHitAdd(b *testing.B) {
	sock := servingAgent(b, b.N)
	conf := []byte(`{"cniVersion":"1.1.0","name":"underlay","ipam":{"type":"warmpool","pool":"dual"}}`)
	var next atomic.Int64
	var lat latencies
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1)
			env := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": fmt.Sprintf("c%d", i), "CNI_NETNS": "/run/netns/x",
				"CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": fmt.Sprintf("K8S_POD_NAMESPACE=default;K8S_POD_NAME=p%d", i)}
			msg, err := wire.EncodeInvocation(func(k string) string { return env[k] }, conf)
			if err != nil {
				b.Error(err)
				return
			}
			start := time.Now()
			answer, err := wire.Call(sock, msg, time.Now().Add(time.Minute))
			lat.add(time.Since(start))
			out, exit, perr := wire.ParseAnswer(answer)
			if err != nil || perr != nil || exit != 0 {
				b.Errorf("ADD %d: %v %v exit %d: %s", i, err, perr, exit, out)
				return
			}
		}
	})
	b.StopTimer()
	lat.report(b)
}

// BenchmarkLibcniAdd: a full ADD as a runtime does it: libcni execs the
// plugin binary (process start included), which asks the agent. IPAM only,
// into a pod namespace, no interface plugin.
//
//	go test ./agent -run XXX -bench LibcniAdd -benchtime 300x
func BenchmarkLibcniAdd(b *testing.B) {
	sock := servingAgent(b, b.N)
	host := testenv.Host(b, "bench")
	pod, err := host.NewPod("p")
	if err != nil {
		b.Fatal(err)
	}
	cni := testenv.CNI(b, testenv.PluginDir(b))
	conf, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"underlay","plugins":[{"type":"warmpool","ipam":{"type":"warmpool","pool":"dual","socket":%q}}]}`, sock)))
	if err != nil {
		b.Fatal(err)
	}
	var lat latencies
	b.ResetTimer()
	for i := range b.N {
		rt := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("c%d", i), NetNS: pod.Path(), IfName: "eth0",
			Args: [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", fmt.Sprintf("p%d", i)}}}
		start := time.Now()
		err := host.Do(func() error {
			_, err := cni.AddNetworkList(context.Background(), conf, rt)
			return err
		})
		lat.add(time.Since(start))
		if err != nil {
			b.Fatalf("ADD %d: %v", i, err)
		}
	}
	b.StopTimer()
	lat.report(b)
}
