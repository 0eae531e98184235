package perf

import (
	"encoding/json"
	"fmt"
	"math/big"
	"net/netip"
	"path/filepath"
	"sync/atomic"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/internal/rig/netsim"
)

// The IPAMs the harness knows. Any other CNI config can be measured the
// same way: a network is just a config list per node.
const (
	IPAMWarmpool  = "warmpool"
	IPAMStatic    = "static"
	IPAMHostLocal = "host-local"
)

// Address plan: each IPAM gets subnets of its own, so that no two ever
// hand out the same address even when their runs overlap in teardown.
var (
	warmpoolV4  = netip.MustParsePrefix("10.64.0.0/12")
	warmpoolV6  = netip.MustParsePrefix("fd00:64::/64")
	staticV4    = netip.MustParsePrefix("10.192.0.0/12")
	staticV6    = netip.MustParsePrefix("fd00:192::/64")
	hostLocalV4 = netip.MustParsePrefix("10.128.0.0/12")
	hostLocalV6 = netip.MustParsePrefix("fd00:128::/64")
)

// firstHost is the offset of the first address handed out in a subnet:
// .1 is the gateway.
const firstHost = 10

// benchPool is warmpool's pool: size pairs, for the pods of the
// namespaces labelled for warmpool, on the harness's nodes.
func benchPool(name string, size int) *v1alpha1.IPPool {
	subnet := func(p netip.Prefix) *v1alpha1.Subnet {
		return &v1alpha1.Subnet{CIDR: p.String(), Gateway: nth(p, 1).String(),
			Ranges: []v1alpha1.IPRange{{Start: nth(p, firstHost).String(), End: nth(p, firstHost+size-1).String()}}}
	}
	return &v1alpha1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.IPPoolSpec{
			IPv4: subnet(warmpoolV4), IPv6: subnet(warmpoolV6),
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{ipamLabel: IPAMWarmpool}},
			NodeSelector:      &metav1.LabelSelector{MatchLabels: map[string]string{nodeLabel: "true"}},
		},
	}
}

// nth is the address n after p's network address.
func nth(p netip.Prefix, n int) netip.Addr {
	b := new(big.Int).SetBytes(p.Masked().Addr().AsSlice())
	b.Add(b, big.NewInt(int64(n)))
	raw := b.FillBytes(make([]byte, p.Addr().BitLen()/8))
	a, _ := netip.AddrFromSlice(raw)
	return a
}

// chain wraps an IPAM section in the network config a node runs: macvlan
// on the host namespace's master, or the IPAM plugin alone.
func chain(ipam map[string]any, netns bool) (*libcni.NetworkConfigList, error) {
	plugin := map[string]any{"type": ipam["type"], "ipam": ipam}
	if netns {
		plugin = map[string]any{"type": "macvlan", "master": netsim.Master, "mode": "bridge", "ipam": ipam}
	}
	conf, err := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": "bench", "plugins": []any{plugin}})
	if err != nil {
		return nil, err
	}
	l, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		return nil, fmt.Errorf("network config %s: %w", conf, err)
	}
	return l, nil
}

// perNode builds a network from an IPAM section per node.
func perNode(name string, nodes int, netns bool, ipam func(i int) map[string]any) (*network, error) {
	n := &network{ipam: name}
	for i := range nodes {
		l, err := chain(ipam(i), netns)
		if err != nil {
			return nil, err
		}
		n.lists = append(n.lists, l)
	}
	return n, nil
}

// warmpoolNetwork asks each node's agent, on its socket, for pool's units.
func warmpoolNetwork(pool string, sockets []string, netns bool) (*network, error) {
	return perNode(IPAMWarmpool, len(sockets), netns, func(i int) map[string]any {
		return map[string]any{"type": "warmpool", "pool": pool, "socket": sockets[i]}
	})
}

// staticNetwork is the floor: the harness picks each pod's pair (a
// counter) and passes it in CNI_ARGS, so the IPAM keeps no state at all.
func staticNetwork(nodes int, netns bool) (*network, error) {
	n, err := perNode(IPAMStatic, nodes, netns, func(int) map[string]any {
		return map[string]any{"type": "static"}
	})
	if err != nil {
		return nil, err
	}
	var next atomic.Int64
	span := 1<<(32-staticV4.Bits()) - 2*firstHost // wraps long after any pod of a run is gone
	n.podArgs = func(int, *corev1.Pod) [][2]string {
		i := firstHost + int(next.Add(1)-1)%span
		return [][2]string{{"IP", fmt.Sprintf("%s/%d,%s/%d", nth(staticV4, i), staticV4.Bits(), nth(staticV6, i), staticV6.Bits())}}
	}
	return n, nil
}

// hostLocalNetwork gives each node a disjoint range of perNode pairs and
// a store of its own: node-local state, no coordination, no scarcity.
func hostLocalNetwork(nodes, perNodeSize int, dataDir string, netns bool) (*network, error) {
	return perNode(IPAMHostLocal, nodes, netns, func(i int) map[string]any {
		rng := func(p netip.Prefix) []map[string]string {
			first := firstHost + i*perNodeSize
			return []map[string]string{{"subnet": p.String(), "gateway": nth(p, 1).String(),
				"rangeStart": nth(p, first).String(), "rangeEnd": nth(p, first+perNodeSize-1).String()}}
		}
		return map[string]any{"type": "host-local", "dataDir": filepath.Join(dataDir, fmt.Sprintf("node-%d", i)),
			"ranges": []any{rng(hostLocalV4), rng(hostLocalV6)}}
	})
}
