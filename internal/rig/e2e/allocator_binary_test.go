package e2e

import (
	"context"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// TestAllocatorBinary runs the real warmpool-allocator binary against the
// rig with an external NATS: it takes the leader Lease, answers an agent's
// sync on the bus, and on SIGTERM exits cleanly and releases the Lease.
func TestAllocatorBinary(t *testing.T) {
	c := newCluster(t, dualPool(4, nil))
	c.alloc.Stop() // the in-process allocator must not answer for the binary
	bin := testenv.Binary(t, "warmpool-allocator")
	cmd := exec.Command(bin, "--kubeconfig", c.cp.Kubeconfig(), "--nats-url", c.nats.ClientURL(),
		"--namespace", "default", "--metrics-addr", "127.0.0.1:0")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-done
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := broker.Connect(ctx, c.nats.ClientURL(), "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var reply broker.SyncReply
	if err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		defer rcancel()
		msg, err := conn.RequestWithContext(rctx, broker.SubjectSyncFrom("probe-node"), broker.Encode(&broker.SyncRequest{V: broker.ProtocolVersion, Node: "probe-node", Run: "r", Seq: 1}))
		if err != nil {
			return false, nil // not leading yet
		}
		return true, broker.Decode(msg.Data, &reply)
	}); err != nil {
		t.Fatalf("the allocator binary never answered a sync: %v", err)
	}
	if reply.Error != "" || reply.Epoch == 0 {
		t.Fatalf("sync reply %+v", reply)
	}
	lease, err := c.kube.CoordinationV1().Leases("default").Get(ctx, "warmpool-allocator", metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
		t.Fatalf("leader Lease: %v %+v", err, lease)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the allocator exited with %v on SIGTERM", err)
		}
	case <-ctx.Done():
		t.Fatal("the allocator did not exit on SIGTERM")
	}
	lease, err = c.kube.CoordinationV1().Leases("default").Get(ctx, "warmpool-allocator", metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "" {
		t.Fatalf("the Lease was not released on exit: %v %+v", err, lease.Spec.HolderIdentity)
	}
}
