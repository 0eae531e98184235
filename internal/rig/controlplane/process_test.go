package controlplane

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// TestListensOnTellsTheOwner shows the check that a readiness probe reached
// our own child: this process owns its listener, a child does not.
func TestListensOnTellsTheOwner(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	own, err := listensOn(os.Getpid(), port)
	if err != nil || !own {
		t.Fatalf("listensOn(self, %d) = %v, %v; want true", port, own, err)
	}
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = child.Process.Kill(); _ = child.Wait() }()
	if own, err := listensOn(child.Process.Pid, port); err != nil || own {
		t.Fatalf("listensOn(child, %d) = %v, %v; want false", port, own, err)
	}
}

// TestSweepStaleDirs leaves a directory named as if by a dead process and
// one of this process, and checks that only the first is removed.
func TestSweepStaleDirs(t *testing.T) {
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(os.TempDir(), dirPrefix+strconv.Itoa(dead.Process.Pid)+"-test")
	mine := filepath.Join(os.TempDir(), dirPrefix+strconv.Itoa(os.Getpid())+"-test")
	for _, d := range []string{stale, mine} {
		if err := os.MkdirAll(filepath.Join(d, "etcd"), 0o700); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
	}
	sweepStaleDirs()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale dir %s survived the sweep (%v)", stale, err)
	}
	if _, err := os.Stat(mine); err != nil {
		t.Errorf("the sweep removed this process's dir %s: %v", mine, err)
	}
}
