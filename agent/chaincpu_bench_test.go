package agent_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// BenchmarkChainCPU: the CPU of an ADD and a DEL through the chain a
// node runs (libcni execs macvlan, which execs the IPAM) into a pod
// namespace, with warmpool's plugin against an agent holding warm units
// and with the reference static plugin, side by side (twice each,
// interleaved, since the machine's speed drifts): what warmpool's plugin
// costs a node beyond an IPAM with no state. Each op is an ADD and a DEL
// of a new pod; the namespace's creation is in ns/op, not in the CPU.
//
//	go test ./agent -run XXX -bench ChainCPU -benchtime 200x
func BenchmarkChainCPU(b *testing.B) {
	for _, ipam := range []string{"static", "warmpool", "static", "warmpool"} {
		b.Run(ipam, func(b *testing.B) {
			host := testenv.Host(b, "chain")
			cni := testenv.CNI(b, testenv.CNIPluginDir(b), testenv.PluginDir(b))
			socket := ""
			if ipam == "warmpool" {
				socket = servingAgent(b, b.N)
			}
			var adds, dels time.Duration
			for i := range b.N {
				section := fmt.Sprintf(`{"type":"static","addresses":[{"address":"10.%d.%d.%d/8"},{"address":"fd00::%x/64"}]}`, i>>16&255, i>>8&255, i&255, i)
				if socket != "" {
					section = fmt.Sprintf(`{"type":"warmpool","pool":"dual","socket":%q}`, socket)
				}
				conf := macvlanChain(b, section)
				pod, err := host.NewPod(fmt.Sprintf("p%d", i))
				if err != nil {
					b.Fatal(err)
				}
				rt := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("c%d", i), NetNS: pod.Path(), IfName: "eth0",
					Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", fmt.Sprintf("p%d", i)}}}
				c0 := childrenCPU(b)
				if err := host.Do(func() error { _, err := cni.AddNetworkList(context.Background(), conf, rt); return err }); err != nil {
					b.Fatalf("ADD %d: %v", i, err)
				}
				c1 := childrenCPU(b)
				if err := host.Do(func() error { return cni.DelNetworkList(context.Background(), conf, rt) }); err != nil {
					b.Fatalf("DEL %d: %v", i, err)
				}
				adds, dels = adds+c1-c0, dels+childrenCPU(b)-c1
				if err := host.RemovePod(pod); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(adds.Microseconds())/1e3/float64(b.N), "add-cpu-ms")
			b.ReportMetric(float64(dels.Microseconds())/1e3/float64(b.N), "del-cpu-ms")
		})
	}
}

// childrenCPU is the CPU time of this process's exited children (and
// theirs): libcni waits for each plugin it execs, so a call's plugins
// are in it once the call returns.
func childrenCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
