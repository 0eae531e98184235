package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// agentProc is the real warmpool-agent binary run as a process.
type agentProc struct {
	cmd  *exec.Cmd
	done chan error
	// metrics is the address it serves /metrics and /state on.
	metrics string
}

func startAgent(t *testing.T, bin string, c *cluster, node, dir string, env ...string) *agentProc {
	t.Helper()
	metrics := freeLoopbackAddr(t)
	cmd := exec.Command(bin, "--node", node, "--socket", filepath.Join(dir, "agent.sock"), "--state", filepath.Join(dir, "agent.db"),
		"--nats-url", c.nats.ClientURL(), "--kubeconfig", c.cp.Kubeconfig(), "--log-level", "debug", "--metrics-addr", metrics)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &agentProc{cmd: cmd, done: make(chan error, 1), metrics: metrics}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() { p.stop() })
	// Ready once the socket accepts: a crashed predecessor's socket file
	// is there but refuses.
	if err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		conn, err := net.Dial("unix", filepath.Join(dir, "agent.sock"))
		if err != nil {
			return false, nil
		}
		conn.Close()
		return true, nil
	}); err != nil {
		t.Fatalf("agent never listened: %v", err)
	}
	return p
}

// state reads the agent's record from its /state endpoint.
func (p *agentProc) state(ctx context.Context) (*agent.State, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.metrics+agent.StatePath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", agent.StatePath, resp.Status)
	}
	var st agent.State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, err
	}
	return &st, nil
}

func (p *agentProc) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// TestAgentKilledBetweenPersistAndReply kills the real agent process with
// SIGKILL after it committed an assignment and before it answered. The ADD
// fails; after a restart the retried ADD of the same container gets the
// same address, the agent's record holds it once, assigned to that pod,
// and the allocator's lease lists its unit as the node's.
func TestAgentKilledBetweenPersistAndReply(t *testing.T) {
	c := newCluster(t, dualPool(20, &v1alpha1.Warm{MinWarm: i32(2), WarmTarget: i32(4), MaxWarm: i32(16)}))
	bin := testenv.Binary(t, "warmpool-agent")
	kube := kubernetes.NewForConfigOrDie(c.cp.RESTConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pod, err := kube.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "default"},
		Spec:       corev1.PodSpec{NodeName: "node-crash", Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/c:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	conf, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"underlay","plugins":[{"type":"warmpool","ipam":{"type":"warmpool","pool":"dual","socket":%q,"timeout":"10s"}}]}`,
		filepath.Join(dir, "agent.sock"))))
	if err != nil {
		t.Fatal(err)
	}
	cni := testenv.CNI(t, c.paths...)
	host := testenv.Host(t, "node-crash")
	podNS, err := host.NewPod("web-0")
	if err != nil {
		t.Fatal(err)
	}
	rt := &libcni.RuntimeConf{ContainerID: "sandbox-1", NetNS: podNS.Path(), IfName: "net1", Args: [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "web-0"}, {"K8S_POD_UID", string(pod.UID)}}}

	crashing := startAgent(t, bin, c, "node-crash", dir, "WARMPOOL_FAILPOINT=add-after-persist")
	add := func() (types.Result, error) {
		var r types.Result
		err := host.Do(func() error {
			var err error
			r, err = cni.AddNetworkList(ctx, conf, rt)
			return err
		})
		return r, err
	}
	if _, err := add(); err == nil || testenv.CNICode(err) != types.ErrTryAgainLater {
		t.Fatalf("ADD while the agent dies: %v, want code %d (try again later)", err, types.ErrTryAgainLater)
	}
	if err := <-crashing.done; err == nil || !isKilled(crashing.cmd.ProcessState) {
		t.Fatalf("the agent was not killed by the failpoint: %v", err)
	}

	restarted := startAgent(t, bin, c, "node-crash", dir)
	var res *types100.Result
	r, err := add()
	if err == nil {
		res, err = types100.NewResultFromResult(r)
	}
	if err != nil {
		t.Fatalf("retried ADD after the restart: %v", err)
	}
	v4 := res.IPs[0].Address.IP.String()
	// The restarted agent serves the assignment from its record (which
	// pod a unit is assigned to is the agent's fact: the lease says only
	// which node holds the unit).
	var st *agent.State
	var last error
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		st, last = restarted.state(ctx)
		if last != nil {
			return false, nil // not serving yet
		}
		as, ok := assignment(st, "sandbox-1/net1")
		return ok && as.UnitID == v4 && as.Pod.Name == "web-0" && as.Pod.UID == string(pod.UID), nil
	}); err != nil {
		t.Fatalf("the agent's record never held %s assigned to web-0's sandbox-1/net1: %+v (last read: %v)", v4, st, last)
	}
	// The lease lists the unit as node-crash's (the crash lost no grant),
	// and the allocator hears of the assignment (a report, or the
	// restart's sync): it counts the pool's one assigned unit.
	var lease *v1alpha1.NodeLease
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		leases, err := c.leases(ctx)
		if err != nil {
			return false, err
		}
		lease = leases["node-crash"]
		return lists(lease, v4) &&
			metric(t, c.alloc.Registry(), "warmpool_allocator_pool_units", map[string]string{"pool": "dual", "state": "assigned"}) == 1, nil
	}); err != nil {
		t.Fatalf("the NodeLease of node-crash never listed %s with the allocator counting it assigned: %+v", v4, lease)
	}
	// Stop the agent and read its record: the unit is assigned once, to
	// this attachment.
	restarted.stop()
	s, err := store.Open(filepath.Join(dir, "agent.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	snap, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Assignments) != 1 || snap.Assignments["sandbox-1/net1"].UnitID != v4 {
		t.Fatalf("agent record after crash and retry: %+v, want exactly sandbox-1/net1 -> %s", snap.Assignments, v4)
	}
	assigned := 0
	for _, u := range snap.Units {
		if u.State == store.Assigned {
			assigned++
		}
	}
	if assigned != 1 {
		t.Fatalf("%d units assigned in the agent's record, want 1", assigned)
	}
}

func isKilled(ps *os.ProcessState) bool {
	ws, ok := ps.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}
