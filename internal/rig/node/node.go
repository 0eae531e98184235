// Package node runs a real Kubernetes node on this machine, for
// `make test-node`: a local control plane set up for kubelets (package
// controlplane, RealNodes), containerd with runc, the kubelet and
// kube-proxy, CoreDNS for the cluster's names, and Multus as the
// runtime's CNI config, over the cluster network (a bridge) and beside an
// underlay link for macvlan. It owns those processes, the host network
// it adds, the host paths the shipped manifests mount, and its
// directory; Stop undoes all of it, and a node killed before its Stop is
// swept away by the next Start.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/warmpool/warmpool/internal/rig/child"
	"github.com/warmpool/warmpool/internal/rig/controlplane"
	"github.com/warmpool/warmpool/internal/rig/toolchain"
)

// Options configure a node.
type Options struct {
	// Name is the Node's name; default "node-0".
	Name string
	// Dir is the node's private root (the control plane's too). Empty
	// means a new temporary directory, removed by Stop.
	Dir string
	// Images are image tarballs imported into the runtime before the
	// kubelet starts (pods use them with imagePullPolicy IfNotPresent:
	// nothing is pulled). PauseImage, the sandbox's, must be among them.
	Images     []string
	PauseImage string
	// ReadyTimeout bounds the start; default 5 min (a cold start on a
	// loaded 2-core machine).
	ReadyTimeout time.Duration
	Log          *slog.Logger
}

// Node is a running node and its control plane.
type Node struct {
	opts   Options
	addrs  Addresses
	layout Layout
	dir    string
	ownDir bool
	lock   *os.File
	cp     *controlplane.ControlPlane
	kube   kubernetes.Interface
	procs  []*child.Process
	undos  []func(context.Context) error
}

// The node's users besides the admin: the kubelet's (the Node authorizer
// limits it to its node's objects) and kube-proxy's (bound to
// system:node-proxier by the apiserver's bootstrap policy).
func kubeletUser(node string) string { return "system:node:" + node }

const kubeProxyUser = "system:kube-proxy"

// Start brings a node up and waits until it is Ready and its DNS and
// Services work. On error everything started is undone.
func Start(ctx context.Context, opts Options) (n *Node, err error) {
	if opts.Name == "" {
		opts.Name = "node-0"
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 5 * time.Minute
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	n = &Node{opts: opts, addrs: DefaultAddresses, dir: opts.Dir}
	defer func() {
		if err != nil {
			n.Stop()
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, opts.ReadyTimeout)
	defer cancel()
	if err := n.takeLock(ctx); err != nil {
		return n, err
	}
	if n.dir == "" {
		if n.dir, err = os.MkdirTemp("", "warmpool-node-"); err != nil {
			return n, fmt.Errorf("node dir: %w", err)
		}
		n.ownDir = true
	}
	n.layout = Layout{Root: n.dir, CNIBinDir: "/opt/cni/bin", CNIConfDir: filepath.Join(n.dir, "cni", "net.d"), MultusConfDir: "/etc/cni/multus/net.d"}
	for _, d := range []string{"logs", "config", "cni/net.d", "multus", "kubelet"} {
		if err := os.MkdirAll(filepath.Join(n.dir, d), 0o755); err != nil {
			return n, fmt.Errorf("node dir: %w", err)
		}
	}
	if err := n.claimHostPaths(); err != nil {
		return n, err
	}
	if err := n.hostNetwork(ctx); err != nil {
		return n, err
	}
	if err := n.kubeChains(ctx); err != nil {
		return n, err
	}
	n.cp, err = controlplane.Start(ctx, controlplane.Options{
		Dir:               filepath.Join(n.dir, "controlplane"),
		Address:           n.addrs.NodeIP,
		RealNodes:         true,
		ControllerManager: true,
		Scheduler:         true,
		Users: map[string][]string{
			kubeletUser(opts.Name): {"system:nodes"},
			kubeProxyUser:          nil,
		},
		ReadyTimeout: opts.ReadyTimeout,
	})
	if err != nil {
		return n, fmt.Errorf("control plane: %w", err)
	}
	n.undo(func(context.Context) error { n.cp.Stop(); return nil })
	if n.kube, err = kubernetes.NewForConfig(n.cp.RESTConfig()); err != nil {
		return n, err
	}
	if err := n.installCNI(); err != nil {
		return n, err
	}
	if err := n.startContainerd(ctx); err != nil {
		return n, err
	}
	if err := n.startKubelet(ctx); err != nil {
		return n, err
	}
	if err := n.startKubeProxy(ctx); err != nil {
		return n, err
	}
	if err := n.startCoreDNS(ctx); err != nil {
		return n, err
	}
	return n, nil
}

// takeLock makes this the machine's one node, and sweeps away a node
// killed before its Stop.
func (n *Node) takeLock(ctx context.Context) error {
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("node lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return fmt.Errorf("node lock %s: another node runs on this machine: %w", lockPath, err)
	}
	n.lock = f
	if err := sweep(ctx); err != nil {
		return fmt.Errorf("sweep a node left behind: %w", err)
	}
	return nil
}

// undo records how to take back a step of the start; Stop runs them in
// reverse.
func (n *Node) undo(f func(context.Context) error) { n.undos = append(n.undos, f) }

// launch starts one of the node's processes and stops it with the node.
func (n *Node) launch(name string, env []string, bin string, args ...string) (*child.Process, error) {
	p, err := child.StartEnv(name, filepath.Join(n.dir, "logs"), env, bin, args...)
	if err != nil {
		return nil, err
	}
	n.procs = append(n.procs, p)
	n.undo(func(context.Context) error { p.Stop(30 * time.Second); return nil })
	return p, nil
}

func (n *Node) binary(component, name string) (string, error) {
	return toolchain.Binary(component, name)
}

// installCNI puts the plugins the runtime and Multus exec into the CNI
// binary directory (never replacing a file there: the agent installs
// warmpool's own), and Multus's config into the runtime's config
// directory.
func (n *Node) installCNI() error {
	plugins := map[string]string{"multus": toolchain.Multus}
	for _, p := range []string{"bridge", "host-local", "loopback", "portmap", "macvlan"} {
		plugins[p] = toolchain.CNIPlugins
	}
	if err := os.MkdirAll(n.layout.CNIBinDir, 0o755); err != nil {
		return fmt.Errorf("cni: %w", err)
	}
	for name, component := range plugins {
		src, err := n.binary(component, name)
		if err != nil {
			return err
		}
		dst := filepath.Join(n.layout.CNIBinDir, name)
		if _, err := os.Stat(dst); err == nil {
			n.opts.Log.Warn("CNI plugin already installed: kept", "path", dst)
			continue
		}
		b, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("cni: %w", err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			return fmt.Errorf("cni: %w", err)
		}
	}
	conf, err := multusConfig(n.layout, n.addrs, n.cp.Kubeconfig())
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.layout.CNIConfDir, "00-multus.conf"), conf, 0o644); err != nil {
		return fmt.Errorf("cni: %w", err)
	}
	return os.MkdirAll(n.layout.MultusConfDir, 0o755)
}

func (n *Node) startContainerd(ctx context.Context) error {
	bin, err := n.binary(toolchain.Containerd, "containerd")
	if err != nil {
		return err
	}
	runc, err := n.binary(toolchain.Runc, "runc")
	if err != nil {
		return err
	}
	cfg := filepath.Join(n.layout.configDir(), "containerd.toml")
	if err := os.WriteFile(cfg, []byte(containerdConfig(n.layout, n.opts.PauseImage)), 0o644); err != nil {
		return err
	}
	// containerd finds its shim, and the shim runc, on PATH.
	path := "PATH=" + filepath.Dir(bin) + ":" + filepath.Dir(runc) + ":" + os.Getenv("PATH")
	// After containerd stopped: the shims and containers it left.
	n.undo(func(context.Context) error {
		return n.killContainers(filepath.Join(filepath.Dir(bin), "containerd-shim-runc-v2"))
	})
	p, err := n.launch("containerd", []string{path}, bin, "--config", cfg)
	if err != nil {
		return err
	}
	if err := p.WaitReady(ctx, func(context.Context) error {
		_, err := os.Stat(n.layout.ContainerdSocket())
		return err
	}); err != nil {
		return err
	}
	ctr, err := n.binary(toolchain.Containerd, "ctr")
	if err != nil {
		return err
	}
	for _, img := range n.opts.Images {
		if err := run(ctx, ctr, "--address", n.layout.ContainerdSocket(), "-n", "k8s.io", "images", "import", img); err != nil {
			return fmt.Errorf("import %s: %w", img, err)
		}
	}
	return nil
}

func (n *Node) startKubelet(ctx context.Context) error {
	bin, err := n.binary(toolchain.Kube, "kube")
	if err != nil {
		return err
	}
	cfgDir := n.layout.configDir()
	kubeconfig := filepath.Join(cfgDir, "kubelet.kubeconfig")
	if err := n.cp.UserKubeconfig(kubeletUser(n.opts.Name), kubeconfig); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cfgDir, "resolv.conf"), []byte(resolvConf(n.addrs)), 0o644); err != nil {
		return err
	}
	cfg := filepath.Join(cfgDir, "kubelet.yaml")
	if err := os.WriteFile(cfg, []byte(kubeletConfig(n.layout, n.addrs, n.addrs.NodeIP)), 0o644); err != nil {
		return err
	}
	p, err := n.launch("kubelet", nil, bin, "kubelet",
		"--config="+cfg,
		"--kubeconfig="+kubeconfig,
		"--root-dir="+n.layout.kubeletRoot(),
		"--hostname-override="+n.opts.Name,
		"--node-ip="+n.addrs.NodeIP,
	)
	if err != nil {
		return err
	}
	n.undo(n.removePods)
	return p.WaitReady(ctx, func(ctx context.Context) error {
		node, err := n.kube.CoreV1().Nodes().Get(ctx, n.opts.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("node %s not Ready", n.opts.Name)
	})
}

func (n *Node) startKubeProxy(ctx context.Context) error {
	bin, err := n.binary(toolchain.Kube, "kube")
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(n.layout.configDir(), "kube-proxy.kubeconfig")
	if err := n.cp.UserKubeconfig(kubeProxyUser, kubeconfig); err != nil {
		return err
	}
	ports, err := child.FreePorts(2)
	if err != nil {
		return err
	}
	cfg := filepath.Join(n.layout.configDir(), "kube-proxy.yaml")
	if err := os.WriteFile(cfg, []byte(kubeProxyConfig(n.addrs, kubeconfig, n.opts.Name, ports[0], ports[1])), 0o644); err != nil {
		return err
	}
	// Its chains go once it stopped (undone in reverse).
	n.undo(func(ctx context.Context) error { return run(ctx, bin, "kube-proxy", "--cleanup") })
	p, err := n.launch("kube-proxy", nil, bin, "kube-proxy", "--config="+cfg)
	if err != nil {
		return err
	}
	return p.WaitReady(ctx, controlplane.HTTPCheck(http.DefaultClient, "http://127.0.0.1:"+strconv.Itoa(ports[0])+"/healthz", ""))
}

func (n *Node) startCoreDNS(ctx context.Context) error {
	bin, err := n.binary(toolchain.CoreDNS, "coredns")
	if err != nil {
		return err
	}
	ports, err := child.FreePorts(2)
	if err != nil {
		return err
	}
	cfg := filepath.Join(n.layout.configDir(), "Corefile")
	if err := os.WriteFile(cfg, []byte(corefile(n.addrs, n.cp.Kubeconfig(), ports[0], ports[1])), 0o644); err != nil {
		return err
	}
	p, err := n.launch("coredns", nil, bin, "-conf", cfg)
	if err != nil {
		return err
	}
	return p.WaitReady(ctx, controlplane.HTTPCheck(http.DefaultClient, "http://127.0.0.1:"+strconv.Itoa(ports[0])+"/ready", ""))
}

// removePods deletes the node's workloads before the kubelet stops: the
// controllers first, so that nothing comes back; then the pods on the
// pod network, whose teardown (the runtime's CNI DELs) may need a
// host-network pod (warmpool's agent serves the DELs of its addresses);
// then the rest. It waits until the runtime has no container left.
func (n *Node) removePods(ctx context.Context) error {
	if _, err := n.Kubectl(ctx, nil, "delete", "daemonsets,deployments,replicasets,statefulsets,jobs", "--all", "--all-namespaces", "--cascade=orphan", "--wait=false"); err != nil {
		return err
	}
	grace := int64(1)
	for _, hostNetwork := range []bool{false, true} {
		pods, err := n.kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.opts.Name})
		if err != nil {
			return err
		}
		var left []corev1.Pod
		for _, p := range pods.Items {
			if p.Spec.HostNetwork == hostNetwork {
				_ = n.kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
				left = append(left, p)
			}
		}
		// The kubelet deletes a pod once it is torn down.
		err = wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
			for _, p := range left {
				got, err := n.kube.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
				if !apierrors.IsNotFound(err) && (err != nil || got.UID == p.UID) {
					return false, nil
				}
			}
			return true, nil
		})
		if err != nil {
			n.opts.Log.Warn("node stop: pods not torn down", "hostNetwork", hostNetwork, "err", err)
		}
	}
	ctr, err := n.binary(toolchain.Containerd, "ctr")
	if err != nil {
		return err
	}
	// The sandboxes are gone from the runtime once its CNI DELs ran.
	return wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		out, err := exec.CommandContext(ctx, ctr, "--address", n.layout.ContainerdSocket(), "-n", "k8s.io", "containers", "ls", "-q").Output()
		return err == nil && len(out) == 0, nil
	})
}

// killContainers kills what the runtime left: the shims (each in a
// session of its own, outside containerd's process group) by their
// binary, and the containers by the cgroups the kubelet made, which it
// then removes.
func (n *Node) killContainers(shim string) error {
	errs := []error{killByExe(shim)}
	for _, root := range cgroupRoots() {
		dir := filepath.Join(root, "kubepods")
		if _, err := os.Stat(dir); err == nil {
			errs = append(errs, killCgroupTree(dir))
		}
	}
	return errors.Join(errs...)
}

// ControlPlane is the node's cluster.
func (n *Node) ControlPlane() *controlplane.ControlPlane { return n.cp }

// Name is the Node's name.
func (n *Node) Name() string { return n.opts.Name }

// Addresses are the node's networks.
func (n *Node) Addresses() Addresses { return n.addrs }

// LogDir holds the node's processes' logs.
func (n *Node) LogDir() string { return filepath.Join(n.dir, "logs") }

// Stop undoes the start in reverse (pods, then the processes, then the
// host network and paths), unmounts what the kubelet and the runtime
// left mounted in the node's directory, and removes it. It logs what it
// could not undo, and goes on.
func (n *Node) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for i := len(n.undos) - 1; i >= 0; i-- {
		if err := n.undos[i](ctx); err != nil {
			n.opts.Log.Warn("node stop", "err", err)
		}
	}
	n.undos = nil
	if n.dir != "" {
		if err := unmountUnder(n.dir); err != nil {
			n.opts.Log.Warn("node stop: unmount", "err", err)
		}
		if n.ownDir {
			if err := os.RemoveAll(n.dir); err != nil {
				n.opts.Log.Warn("node stop", "err", err)
			}
		}
	}
	if n.lock != nil {
		n.lock.Close()
		n.lock = nil
	}
}
