// Package testenv gives tests the real components they need, tied to the
// test's lifetime: a control plane (etcd + kube-apiserver, optionally the
// controller-manager and scheduler), host and pod network namespaces, and the
// reference CNI plugins. Everything it starts is stopped and removed by
// t.Cleanup, also when the test fails.
//
// A component that cannot be had fails the test under CI=true and skips it
// otherwise, with what to run to get it: CI must never pass by skipping.
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"k8s.io/client-go/rest"

	"github.com/warmpool/warmpool/internal/rig/controlplane"
	"github.com/warmpool/warmpool/internal/rig/gobuild"
	"github.com/warmpool/warmpool/internal/rig/netsim"
	"github.com/warmpool/warmpool/internal/rig/toolchain"
	"github.com/warmpool/warmpool/manifests"
)

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing stops a test that lacks a real component: it fails under CI and
// is skipped elsewhere.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("CI=true and a required component is missing: %s", msg)
	}
	t.Skipf("skipped, a required component is missing: %s", msg)
}

// ControlPlane starts a control plane for the test and stops it when the
// test ends; on failure the test log gets the tail of every component's log.
func ControlPlane(t testing.TB, opts controlplane.Options) *controlplane.ControlPlane {
	t.Helper()
	if _, err := toolchain.Dir(toolchain.Etcd); err != nil {
		Missing(t, "%v", err)
	}
	if _, err := toolchain.Dir(toolchain.Kube); err != nil {
		Missing(t, "%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("control plane logs:\n%s", cp.LogTails(3000))
		}
		cp.Stop()
	})
	return cp
}

// APIServerWithCRDs starts etcd and kube-apiserver, installs warmpool's CRDs
// and returns an admin client config.
func APIServerWithCRDs(t testing.TB) *rest.Config {
	t.Helper()
	cp := ControlPlane(t, controlplane.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := manifests.InstallCRDs(ctx, cp.RESTConfig()); err != nil {
		t.Fatal(err)
	}
	return cp.RESTConfig()
}

var sweepOnce sync.Once

// Host creates a host network namespace for a simulated node, removed with
// all its pod namespaces when the test ends.
func Host(t testing.TB, node string) *netsim.Host {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "network namespaces need root (running as uid %d)", os.Geteuid())
	}
	if err := netsim.Available(); err != nil {
		Missing(t, "network namespaces: %v (install iproute2)", err)
	}
	sweepOnce.Do(func() {
		removed, err := netsim.SweepStale()
		if len(removed) > 0 {
			t.Logf("removed %d namespaces left by killed test processes: %v", len(removed), removed)
		}
		if err != nil {
			t.Logf("sweeping stale namespaces: %v", err)
		}
	})
	h, err := netsim.NewHost(node)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("remove namespaces of %s: %v", node, err)
		}
	})
	return h
}

// CNIPluginDir returns the directory holding the reference CNI plugins
// (macvlan, host-local, static).
func CNIPluginDir(t testing.TB) string {
	t.Helper()
	dir, err := toolchain.Dir(toolchain.CNIPlugins)
	if err != nil {
		Missing(t, "%v", err)
	}
	return dir
}

// PluginDir builds the warmpool plugin binary (cmd/warmpool) into a new
// directory of the test's and returns it, for a CNI path beside
// CNIPluginDir.
func PluginDir(t testing.TB) string {
	t.Helper()
	return filepath.Dir(Binary(t, "warmpool"))
}

// Binary builds ./cmd/<name> of this module, as shipped (gobuild), into
// a new directory of the test's and returns its path. The Go build cache
// makes every build after the first a link.
func Binary(t testing.TB, name string) string {
	t.Helper()
	dir := t.TempDir()
	if err := gobuild.Build(context.Background(), dir, "./cmd/"+name); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, name)
}

// RunCLI runs a command line tool (kubectl-warmpool) for at most a
// minute and returns its standard output and error and its exit code;
// what a code means is the caller's to judge. A tool that could not be
// run fails the test.
func RunCLI(t testing.TB, ctx context.Context, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errOut.String(), 0
	case errors.As(err, &exit):
		return out.String(), errOut.String(), exit.ExitCode()
	}
	t.Fatalf("run %s %s: %v", bin, strings.Join(args, " "), err)
	return "", "", 0
}

// CNI returns a libcni runtime that execs plugins from paths, with a result
// cache of the test's own. The exec is given explicitly: libcni's lazy
// default (a nil exec) is initialised without a lock, a data race when one
// CNIConfig serves concurrent ADDs as a runtime's does.
func CNI(t testing.TB, paths ...string) *libcni.CNIConfig {
	t.Helper()
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	return libcni.NewCNIConfigWithCacheDir(paths, t.TempDir(), exec)
}

// Logger returns a logger whose lines go to the test's log, shown when the
// test fails (or with -v). Lines logged after the test ended are dropped:
// testing panics on a Log from a goroutine that outlived its test.
func Logger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// CNICode returns the code of a CNI error (as libcni or a plugin returns
// it), or 0 when err is not one.
func CNICode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}
