// Package toolchain locates the real component binaries (etcd, the combined
// Kubernetes control-plane binary, the reference CNI plugins) that
// build.sh, beside this file, builds from the Go module proxy into a cache
// outside the clone. build.sh owns the cache layout; this package only asks it.
package toolchain

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/warmpool/warmpool/internal/rig/gobuild"
)

// Components that build.sh knows.
const (
	Etcd          = "etcd"
	Kube          = "kube"
	CNIPlugins    = "cniplugins"
	ControllerGen = "controller-gen"
	// A real node's, beside Kube's kubelet, kube-proxy and kubectl.
	Containerd = "containerd"
	Runc       = "runc"
	CoreDNS    = "coredns"
	Multus     = "multus"
)

// ErrNotBuilt means a component's cache directory holds no complete build.
var ErrNotBuilt = errors.New("not built")

// Dir returns the cache directory holding a component's binaries, or an error
// wrapping ErrNotBuilt that says how to build it. WARMPOOL_BIN_<COMPONENT>
// (upper case, '-' as '_') overrides the cache, e.g. for an installed perf
// tool that has no source tree beside it.
func Dir(component string) (string, error) {
	env := "WARMPOOL_BIN_" + strings.ToUpper(strings.ReplaceAll(component, "-", "_"))
	dir := os.Getenv(env)
	if dir == "" {
		script, err := buildScript()
		if err != nil {
			return "", fmt.Errorf("%s: %w (set %s)", component, err, env)
		}
		out, err := exec.Command("bash", script, "--print-dir", component).Output()
		if err != nil {
			return "", fmt.Errorf("%s: locate cache: %w", component, describe(err))
		}
		dir = strings.TrimSpace(string(out))
	}
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		return "", fmt.Errorf("%s in %s: %w: run `make bins` (the first build of the Kubernetes binaries takes ~12 min on 2 cores)", component, dir, ErrNotBuilt)
	}
	return dir, nil
}

// Binary returns the path of one binary of a component.
func Binary(component, name string) (string, error) {
	dir, err := Dir(component)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, name), nil
}

// buildScript finds build.sh beside this file's source, or, in a binary
// built with -trimpath (as make build builds them), in the module of the
// working directory.
func buildScript() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok {
		script := filepath.Join(filepath.Dir(file), "build.sh")
		if _, err := os.Stat(script); err == nil {
			return script, nil
		}
	}
	root, err := gobuild.ModuleRoot()
	if err != nil {
		return "", fmt.Errorf("build script: run inside warmpool's source tree: %w", err)
	}
	script := filepath.Join(root, "internal", "rig", "toolchain", "build.sh")
	if _, err := os.Stat(script); err != nil {
		return "", fmt.Errorf("build script: %w", err)
	}
	return script, nil
}

func describe(err error) error {
	var exit *exec.ExitError
	if errors.As(err, &exit) && len(exit.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(exit.Stderr)))
	}
	return err
}
