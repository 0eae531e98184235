package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/rig/controlplane"
	"github.com/warmpool/warmpool/internal/rig/testenv"
	"github.com/warmpool/warmpool/manifests"
)

// TestBinariesAuthenticateOnTheBus runs the allocator binary with its
// embedded NATS server authenticating agents (--nats-agent-auth=
// serviceaccount) and the agent binary with its pod's projected-style
// token (--nats-token-file): the agent syncs and gets its warm units,
// while a client without a credential is refused.
func TestBinariesAuthenticateOnTheBus(t *testing.T) {
	cp := testenv.ControlPlane(t, controlplane.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := manifests.InstallCRDs(ctx, cp.RESTConfig()); err != nil {
		t.Fatal(err)
	}
	cs, err := client.New(cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.IPPools().Create(ctx, dualPool(8, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kube := kubernetes.NewForConfigOrDie(cp.RESTConfig())
	if err := controlplane.RegisterNode(ctx, kube, "node-a", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "warmpool-agent"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := kube.CoreV1().Pods("default").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "warmpool-agent-a"},
		Spec: corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "warmpool-agent", Containers: []corev1.Container{{Name: "agent", Image: "registry.invalid/agent:1"}}}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := kube.CoreV1().ServiceAccounts("default").CreateToken(ctx, "warmpool-agent", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences:      []string{broker.DefaultAgentAudience},
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	natsAddr, metricsAddr := freeLoopbackAddr(t), freeLoopbackAddr(t)

	runBinary(t, testenv.Binary(t, "warmpool-allocator"), "--kubeconfig", cp.Kubeconfig(), "--namespace", "default", "--metrics-addr", "127.0.0.1:0",
		"--nats-listen", natsAddr, "--nats-agent-auth", "serviceaccount", "--agent-service-account", "default/warmpool-agent")
	runBinary(t, testenv.Binary(t, "warmpool-agent"), "--node", "node-a", "--socket", filepath.Join(dir, "agent.sock"), "--state", filepath.Join(dir, "agent.db"),
		"--nats-url", "nats://"+natsAddr, "--nats-token-file", tokenFile, "--kubeconfig", cp.Kubeconfig(), "--metrics-addr", metricsAddr)

	var st agent.State
	if err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+agent.StatePath, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, nil // not serving yet
		}
		defer resp.Body.Close()
		st = agent.State{}
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			return false, nil
		}
		return st.Fenced == "" && st.Epoch > 0 && len(st.Units) > 0, nil
	}); err != nil {
		t.Fatalf("the agent never synced and got units over the authenticated bus: %+v", st)
	}

	_, err = broker.Connect(ctx, "nats://"+natsAddr, "anonymous")
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("a client without a credential: %v, want an authorization violation", err)
	}
}

// freeLoopbackAddr returns a loopback address with a port free at the time.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// runBinary starts a binary for the rest of the test.
func runBinary(t *testing.T, bin string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(fmt.Errorf("%s: %w", bin, err))
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
}
