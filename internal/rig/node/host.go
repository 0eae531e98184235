package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// The host network a node adds. One node runs on a machine at a time
// (lockPath), so the names are fixed, and a node left behind by a killed
// run is found by them.
const (
	// nodeLink carries the node's address (the kernel here has no dummy
	// links, so a veth end does); its peer only keeps it up.
	nodeLink, nodePeer = "wpnode-ip", "wpnode-ipp"
	// UnderlayLink is the macvlan master of the node's underlay: the
	// attachment's config names it.
	UnderlayLink, underlayPeer = "wpnode-ul", "wpnode-ulp"
	// bridgeLink is the cluster network's bridge (clusterNetwork).
	bridgeLink = "wpnode0"
	// ruleComment marks the iptables rules the node adds itself.
	ruleComment = "warmpool-test-node"
	lockPath    = "/run/warmpool-test-node.lock"
)

// DefaultAddresses are the node's networks: private ranges no machine
// of this kind routes.
var DefaultAddresses = Addresses{NodeIP: "10.250.0.1", PodCIDR: "10.251.0.0/24"}

// run runs a command and returns its error with its output.
func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// uplinks are the interfaces of the machine's default routes: the pods'
// traffic must never leave through them.
func uplinks(ctx context.Context) ([]string, error) {
	var out []string
	for _, family := range []string{"-4", "-6"} {
		b, err := exec.CommandContext(ctx, "ip", family, "route", "show", "default").Output()
		if err != nil {
			return nil, fmt.Errorf("ip %s route show default: %w", family, err)
		}
		f := strings.Fields(string(b))
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "dev" && !slices.Contains(out, f[i+1]) {
				out = append(out, f[i+1])
			}
		}
	}
	return out, nil
}

// hostNetwork adds the node's links and the rules that keep its pods'
// traffic on the machine: forwarding to an uplink is dropped (the bridge
// plugin turns forwarding on), then records how to undo it all.
func (n *Node) hostNetwork(ctx context.Context) error {
	for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("host network: %w", err)
		}
		was := bytes.TrimSpace(b)
		n.undo(func(context.Context) error { return os.WriteFile(f, append(was, '\n'), 0o644) })
	}
	ups, err := uplinks(ctx)
	if err != nil {
		return fmt.Errorf("host network: %w", err)
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		for _, up := range ups {
			rule := []string{"FORWARD", "-o", up, "-m", "comment", "--comment", ruleComment, "-j", "DROP"}
			if err := run(ctx, ipt, append([]string{"-I", rule[0], "1"}, rule[1:]...)...); err != nil {
				return fmt.Errorf("host network: %w", err)
			}
			n.undo(func(ctx context.Context) error { return run(ctx, ipt, append([]string{"-D"}, rule...)...) })
		}
	}
	for _, pair := range [][2]string{{nodeLink, nodePeer}, {UnderlayLink, underlayPeer}} {
		if err := run(ctx, "ip", "link", "add", pair[0], "type", "veth", "peer", "name", pair[1]); err != nil {
			return fmt.Errorf("host network: %w", err)
		}
		n.undo(func(ctx context.Context) error { return run(ctx, "ip", "link", "del", pair[0]) })
		for _, l := range pair {
			if err := run(ctx, "ip", "link", "set", l, "up"); err != nil {
				return fmt.Errorf("host network: %w", err)
			}
		}
	}
	if err := run(ctx, "ip", "addr", "add", n.addrs.NodeIP+"/24", "dev", nodeLink); err != nil {
		return fmt.Errorf("host network: %w", err)
	}
	// The bridge plugin creates the bridge at the first pod; it goes with
	// the node.
	n.undo(func(ctx context.Context) error {
		if exec.CommandContext(ctx, "ip", "link", "show", bridgeLink).Run() != nil {
			return nil
		}
		return run(ctx, "ip", "link", "del", bridgeLink)
	})
	return nil
}

// sweep removes what a node killed before its Stop left on the machine:
// its links, its rules, and the chains kube-proxy and the kubelet add.
// The caller holds the node lock, so no node is running.
func sweep(ctx context.Context) error {
	var errs []error
	for _, l := range []string{nodeLink, UnderlayLink, bridgeLink} {
		if exec.CommandContext(ctx, "ip", "link", "show", l).Run() == nil {
			errs = append(errs, run(ctx, "ip", "link", "del", l))
		}
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		b, err := exec.CommandContext(ctx, ipt, "-S", "FORWARD").Output()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s -S FORWARD: %w", ipt, err))
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.Contains(line, ruleComment) || !strings.HasPrefix(line, "-A ") {
				continue
			}
			errs = append(errs, run(ctx, ipt, append([]string{"-D"}, splitRule(strings.TrimPrefix(line, "-A "))...)...))
		}
	}
	return errors.Join(errs...)
}

// splitRule splits an `iptables -S` line into arguments, keeping a quoted
// comment whole.
func splitRule(s string) []string {
	var out []string
	var cur strings.Builder
	quoted := false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
		case r == ' ' && !quoted:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// hostPaths are the host directories the shipped manifests, the runtime
// and the kubelet write whatever their configured roots: the agent's
// socket and record, the CNI binaries and configs, the CNI plugins'
// state and results cache, containerd's opt directory and runc state and
// shim sockets, the kubelet's device-plugin directory and pod logs. A
// node removes the ones it created, and in the others the files it
// added (the first run without the last five left them behind).
var hostPaths = []string{
	"/opt/cni/bin", "/etc/cni/multus/net.d", "/run/warmpool", "/var/lib/warmpool",
	"/var/lib/cni", "/opt/containerd", "/run/containerd", "/var/lib/kubelet", "/var/log/pods", "/var/log/containers",
}

// claimHostPaths records, for each host path, whether it existed and
// what it held, and undoes the node's additions at Stop.
func (n *Node) claimHostPaths() error {
	for _, dir := range hostPaths {
		before := map[string]bool{}
		entries, err := os.ReadDir(dir)
		switch {
		case errors.Is(err, os.ErrNotExist):
			// The first missing ancestor goes at Stop.
			top := dir
			for parent := filepath.Dir(top); parent != "/"; parent = filepath.Dir(top) {
				if _, err := os.Stat(parent); err == nil {
					break
				}
				top = parent
			}
			n.undo(func(context.Context) error { return os.RemoveAll(top) })
			continue
		case err != nil:
			return fmt.Errorf("host path %s: %w", dir, err)
		}
		for _, e := range entries {
			before[e.Name()] = true
		}
		n.undo(func(context.Context) error {
			entries, err := os.ReadDir(dir)
			if err != nil {
				return err
			}
			var errs []error
			for _, e := range entries {
				if !before[e.Name()] {
					errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
				}
			}
			return errors.Join(errs...)
		})
	}
	return nil
}

// kubeChains undoes the iptables chains the kubelet adds and kube-proxy's
// --cleanup leaves (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...): those that
// did not exist before the node started, and the rules jumping to them.
func (n *Node) kubeChains(ctx context.Context) error {
	before := map[string]bool{}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"filter", "nat", "mangle"} {
			rules, err := exec.CommandContext(ctx, ipt, "-t", table, "-S").Output()
			if err != nil {
				return fmt.Errorf("%s -t %s -S: %w", ipt, table, err)
			}
			for _, c := range newChains(string(rules), nil) {
				before[ipt+" "+table+" "+c] = true
			}
		}
	}
	n.undo(func(ctx context.Context) error {
		var errs []error
		for _, ipt := range []string{"iptables", "ip6tables"} {
			for _, table := range []string{"filter", "nat", "mangle"} {
				b, err := exec.CommandContext(ctx, ipt, "-t", table, "-S").Output()
				if err != nil {
					errs = append(errs, err)
					continue
				}
				rules := string(b)
				chains := newChains(rules, func(c string) bool { return before[ipt+" "+table+" "+c] })
				for _, line := range strings.Split(rules, "\n") {
					f := splitRule(strings.TrimPrefix(line, "-A "))
					if !strings.HasPrefix(line, "-A ") || len(f) < 3 || !slices.Contains(chains, f[len(f)-1]) || f[len(f)-2] != "-j" {
						continue
					}
					errs = append(errs, run(ctx, ipt, append([]string{"-t", table, "-D"}, f...)...))
				}
				for _, c := range chains {
					errs = append(errs, run(ctx, ipt, "-t", table, "-F", c))
				}
				for _, c := range chains {
					errs = append(errs, run(ctx, ipt, "-t", table, "-X", c))
				}
			}
		}
		return errors.Join(errs...)
	})
	return nil
}

// newChains lists the KUBE-* chains an `iptables -S` output declares,
// but those old says existed before.
func newChains(rules string, old func(string) bool) []string {
	var out []string
	for _, line := range strings.Split(rules, "\n") {
		if c, ok := strings.CutPrefix(line, "-N "); ok && strings.HasPrefix(c, "KUBE-") && (old == nil || !old(c)) {
			out = append(out, c)
		}
	}
	return out
}
