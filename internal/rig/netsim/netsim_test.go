package netsim_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/warmpool/warmpool/internal/rig/netsim"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

const chain = `{
  "cniVersion": "1.1.0",
  "name": "netsim-test",
  "plugins": [{
    "type": "macvlan",
    "master": "m0",
    "mode": "bridge",
    "ipam": {
      "type": "static",
      "addresses": [{"address": "10.10.0.5/24"}, {"address": "fd00:10::5/64"}]
    }
  }]
}`

// TestMacvlanOnHostMaster runs the real macvlan plugin, exec'd through
// libcni from inside a host namespace, into a pod namespace: the helper's m0
// must work as a macvlan master. Then it checks that Close leaves no
// namespace behind.
func TestMacvlanOnHostMaster(t *testing.T) {
	host := testenv.Host(t, "node-1")
	pluginDir := testenv.CNIPluginDir(t)
	pod, err := host.NewPod("default-web-0")
	if err != nil {
		t.Fatal(err)
	}
	if err := pod.DisableDAD(); err != nil {
		t.Fatal(err)
	}
	conf, err := libcni.ConfListFromBytes([]byte(chain))
	if err != nil {
		t.Fatal(err)
	}
	cni := testenv.CNI(t, pluginDir)
	rt := &libcni.RuntimeConf{ContainerID: "c0ffee", NetNS: pod.Path(), IfName: "eth0"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var res *types100.Result
	err = host.Do(func() error {
		r, err := cni.AddNetworkList(ctx, conf, rt)
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(r)
		return err
	})
	if err != nil {
		t.Fatalf("ADD through macvlan on %s: %v", netsim.Master, err)
	}
	if len(res.IPs) != 2 || res.IPs[0].Address.String() != "10.10.0.5/24" || res.IPs[1].Address.String() != "fd00:10::5/64" {
		t.Fatalf("result IPs %v, want 10.10.0.5/24 and fd00:10::5/64", res.IPs)
	}
	out, err := exec.Command("ip", "-n", pod.Name, "-d", "addr", "show", "eth0").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr in pod: %v: %s", err, out)
	}
	for _, want := range []string{"macvlan", "10.10.0.5/24", "fd00:10::5/64"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("pod eth0 lacks %q:\n%s", want, out)
		}
	}
	if err := host.Do(func() error { return cni.DelNetworkList(ctx, conf, rt) }); err != nil {
		t.Fatalf("DEL: %v", err)
	}

	if err := host.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{host.Name, pod.Name} {
		if netsim.Exists(ns) {
			t.Errorf("namespace %s still exists after Close", ns)
		}
	}
	if _, err := host.NewPod("late"); err == nil {
		t.Error("NewPod on a closed host succeeded")
	}
}

// TestPodsAreIsolated checks that two hosts get separate masters and that a
// pod namespace removed twice is not an error.
func TestPodsAreIsolated(t *testing.T) {
	a := testenv.Host(t, "node-a")
	b := testenv.Host(t, "node-b")
	if a.Name == b.Name {
		t.Fatalf("two hosts share namespace %s", a.Name)
	}
	for _, h := range []*netsim.Host{a, b} {
		out, err := exec.Command("ip", "-n", h.Name, "-o", "link", "show", netsim.Master).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "UP") {
			t.Fatalf("%s: master %s not up: %v %s", h.Name, netsim.Master, err, out)
		}
	}
	p, err := a.NewPod("p")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.RemovePod(p); err != nil {
		t.Fatal(err)
	}
	if err := a.RemovePod(p); err != nil {
		t.Fatalf("second RemovePod: %v", err)
	}
}

// TestSweepStale leaves a namespace named as if by a process that has exited
// (as after kill -9 of a test binary) and checks that SweepStale removes it
// and spares this process's own.
func TestSweepStale(t *testing.T) {
	host := testenv.Host(t, "node-live")
	// A child that has exited gives a pid that no longer exists.
	child := exec.Command("true")
	if err := child.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("%s%d.12345-node-dead-0000", netsim.Prefix, child.Process.Pid)
	// A live pid with another start time is a reused pid: also stale.
	reused := fmt.Sprintf("%s%d.1-node-reused-0000", netsim.Prefix, os.Getpid())
	for _, ns := range []string{stale, reused} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}

	// Another test process sweeping at the same moment may be the one that
	// removes them: what counts is that they are gone.
	removed, err := netsim.SweepStale()
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{stale, reused} {
		if netsim.Exists(ns) {
			t.Errorf("stale namespace %s not removed (removed %v)", ns, removed)
		}
	}
	if !netsim.Exists(host.Name) {
		t.Errorf("SweepStale removed the live namespace %s", host.Name)
	}
}

// TestCloseRacesNewPod closes a host while pods are being added to it and
// removed: no namespace may outlive the host, and Close must not fail on a
// namespace that a concurrent remover already deleted.
func TestCloseRacesNewPod(t *testing.T) {
	host := testenv.Host(t, "node-race")
	var wg sync.WaitGroup
	created := make(chan string, 1000)
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				p, err := host.NewPod(fmt.Sprintf("w%d-%d", w, i))
				if err != nil {
					return // the host was closed
				}
				created <- p.Name
				if i%2 == 0 {
					_ = host.RemovePod(p) // races Close's removal of the same pod
				}
			}
		})
	}
	// Close once the workers are demonstrably mid-flight.
	for range 8 {
		<-created
	}
	if err := host.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	wg.Wait()
	close(created)
	for n := range created {
		if netsim.Exists(n) {
			t.Errorf("pod namespace %s outlived its host", n)
		}
	}
	if netsim.Exists(host.Name) {
		t.Errorf("host namespace %s survived Close", host.Name)
	}
}
