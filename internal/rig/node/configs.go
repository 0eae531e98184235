package node

import (
	"encoding/json"
	"fmt"
)

// Layout is where one node keeps its state. Root holds what is private
// to the node (containerd's root and state, the kubelet's root, logs and
// configs); the CNI directories and warmpool's are the host paths the
// shipped manifests mount, shared by the machine.
type Layout struct {
	Root string
	// CNIBinDir and CNIConfDir are the runtime's CNI directories:
	// /opt/cni/bin and /etc/cni/net.d on a real node.
	CNIBinDir, CNIConfDir string
	// MultusConfDir holds the attachments' configs Multus reads by name
	// (the agent's install-cni writes warmpool's there).
	MultusConfDir string
}

func (l Layout) containerdRoot() string  { return l.Root + "/containerd/root" }
func (l Layout) containerdState() string { return l.Root + "/containerd/state" }

// ContainerdSocket is the CRI endpoint the kubelet dials.
func (l Layout) ContainerdSocket() string { return l.containerdState() + "/containerd.sock" }
func (l Layout) kubeletRoot() string      { return l.Root + "/kubelet" }
func (l Layout) configDir() string        { return l.Root + "/config" }

// Addresses name the node's networks.
type Addresses struct {
	// NodeIP is the node's InternalIP: kube-apiserver, the kubelet and
	// CoreDNS listen there, and hostNetwork pods (the agent) have it.
	NodeIP string
	// PodCIDR is the cluster network's (the bridge's) range of pod IPs.
	PodCIDR string
	// ServiceCIDR and ClusterDNS: the apiserver's Service range and the
	// address kubelet hands pods as their nameserver (CoreDNS, on NodeIP).
	ServiceCIDR string
}

// containerdConfig is containerd's config (version 3, as containerd 2.x
// writes it): a private root and state so that nothing collides with
// another containerd on the machine; runc under cgroupfs, as the kubelet;
// the pause image pinned to the one imported, never pulled; the CNI
// directories; and restrict_oom_score_adj, because this machine's
// capability bounding set lacks CAP_SYS_RESOURCE and runc cannot lower a
// container's oom_score_adj below containerd's.
func containerdConfig(l Layout, pauseImage string) string {
	return fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q

[grpc]
  address = %[3]q

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = %[4]q

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = [%[5]q]
  conf_dir = %[6]q

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  SystemdCgroup = false
`, l.containerdRoot(), l.containerdState(), l.ContainerdSocket(), pauseImage, l.CNIBinDir, l.CNIConfDir)
}

// kubeletConfig is the KubeletConfiguration of a node on this kind of
// machine: cgroup v1 allowed (failCgroupV1 defaults to true since 1.35),
// cgroupfs as containerd, swap tolerated, no image GC or disk eviction (a
// test machine's disk is small and shared), the cluster DNS on the node,
// and the kubelet's API open only to the loopback admin (no webhook: the
// apiserver reaches it for logs and exec with no client certificate).
func kubeletConfig(l Layout, a Addresses, clusterDNS string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://%[1]s
address: %[2]s
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
clusterDomain: cluster.local
clusterDNS: [%[3]s]
resolvConf: %[4]q
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "0%%"
  nodefs.available: "0%%"
  nodefs.inodesFree: "0%%"
  imagefs.available: "0%%"
serializeImagePulls: false
maxPods: 110
`, l.ContainerdSocket(), a.NodeIP, clusterDNS, l.configDir()+"/resolv.conf")
}

// clusterNetwork is the pods' primary network (eth0): a bridge on the
// node with host-local addresses from the pod range, and the node as the
// gateway, so that pods reach Services through kube-proxy's rules. Multus
// delegates to it before a pod's attachments.
func clusterNetwork(a Addresses) map[string]any {
	return map[string]any{
		"cniVersion": "1.0.0",
		"name":       "cluster",
		"plugins": []any{
			map[string]any{
				"type":      "bridge",
				"bridge":    "wpnode0",
				"isGateway": true,
				"ipMasq":    false,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": a.PodCIDR}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
}

// multusConfig is the runtime's one network config: Multus, which runs
// the cluster network for every pod and then the attachments a pod's
// k8s.v1.cni.cncf.io/networks annotation names, from
// NetworkAttachmentDefinitions read with kubeconfig.
func multusConfig(l Layout, a Addresses, kubeconfig string) ([]byte, error) {
	return json.MarshalIndent(map[string]any{
		"cniVersion": "1.0.0",
		"name":       "multus-cni-network",
		"type":       "multus",
		"kubeconfig": kubeconfig,
		"confDir":    l.MultusConfDir,
		"cniDir":     l.Root + "/multus",
		"binDir":     l.CNIBinDir,
		"delegates":  []any{clusterNetwork(a)},
	}, "", "  ")
}

// corefile serves cluster.local from the apiserver on the node's
// address, and nothing else: no forward, so no lookup leaves the machine.
func corefile(a Addresses, kubeconfig string, readyPort, healthPort int) string {
	return fmt.Sprintf(`cluster.local:53 {
    bind %[1]s
    errors
    ready 127.0.0.1:%[3]d
    health 127.0.0.1:%[4]d
    kubernetes cluster.local {
        kubeconfig %[2]s
    }
    cache 5
}
`, a.NodeIP, kubeconfig, readyPort, healthPort)
}

// resolvConf is what the kubelet gives pods (and the node's hostNetwork
// pods with ClusterFirstWithHostNet) besides the cluster DNS: nothing,
// so that no lookup goes to the machine's own resolvers.
func resolvConf(a Addresses) string {
	return "nameserver " + a.NodeIP + "\noptions ndots:5\n"
}

// kubeProxyConfig runs kube-proxy's iptables mode for the node.
func kubeProxyConfig(a Addresses, kubeconfig, hostname string, healthPort, metricsPort int) string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: %[1]s
bindAddress: %[2]s
clusterCIDR: %[3]s
clientConnection:
  kubeconfig: %[4]s
healthzBindAddress: 127.0.0.1:%[5]d
metricsBindAddress: 127.0.0.1:%[6]d
# Leave the machine's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, hostname, a.NodeIP, a.PodCIDR, kubeconfig, healthPort, metricsPort)
}
