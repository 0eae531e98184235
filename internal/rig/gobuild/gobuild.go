// Package gobuild builds warmpool's own commands as its images ship them
// (manifests/images): no cgo, so statically linked; paths trimmed; symbols
// stripped. The tests and the benchmark exec what a node would run: a
// container runtime execs the plugin for every ADD and DEL, and a
// dynamically linked one pays the dynamic loader each time (about 5 ms of
// CPU per exec here, 10 CPU-seconds over a 1000-pod re-creation) and
// depends on the node's libc. The Makefile's build target passes the
// same flags (TestTheBuildsAgree).
package gobuild

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Flags are `go build`'s flags for a shipped binary; it runs with
// CGO_ENABLED=0.
var Flags = []string{"-trimpath", "-ldflags=-s -w"}

// Build builds the module's packages pkgs (such as "./cmd/warmpool") into
// outDir.
func Build(ctx context.Context, outDir string, pkgs ...string) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	args := append(append([]string{"build"}, Flags...), "-o", outDir+string(filepath.Separator))
	cmd := exec.CommandContext(ctx, "go", append(args, pkgs...)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, out)
	}
	return nil
}

// ModuleRoot is the directory of warmpool's go.mod, for a process started
// inside the module.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside warmpool's module")
	}
	return filepath.Dir(gomod), nil
}

// CheckStatic fails unless path is an ELF executable that needs no
// dynamic loader: built as shipped.
func CheckStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: build it as shipped, with CGO_ENABLED=0 (make build)", path)
		}
	}
	return nil
}
