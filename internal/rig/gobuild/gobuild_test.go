package gobuild

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestTheShippedPluginIsStatic(t *testing.T) {
	out := t.TempDir()
	if err := Build(context.Background(), out, "./cmd/warmpool"); err != nil {
		t.Fatal(err)
	}
	if err := CheckStatic(filepath.Join(out, "warmpool")); err != nil {
		t.Fatal(err)
	}
}

// A cgo program links the C library dynamically: CheckStatic names it.
// (The race detector needs cgo and a C compiler, so make test has both.)
func TestCheckStaticRefusesADynamicBinary(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module dyn\n\ngo 1.24\n")
	write("main.go", "package main\n\n// int one(void) { return 1; }\nimport \"C\"\n\nfunc main() { _ = C.one() }\n")
	build := exec.Command("go", "build", "-o", "dyn", ".")
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=1", "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build a cgo program: %v\n%s", err, out)
	}
	err := CheckStatic(filepath.Join(dir, "dyn"))
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("CheckStatic of a cgo program: %v, want dynamically linked", err)
	}
	if err := CheckStatic(filepath.Join(dir, "main.go")); err == nil {
		t.Fatal("CheckStatic of a source file: no error")
	}
}

// The Makefile and the images build warmpool's commands with the same
// flags as Build.
func TestTheBuildsAgree(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{"Makefile", "manifests/images/agent.Dockerfile", "manifests/images/allocator.Dockerfile"} {
		text, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			t.Fatal(err)
		}
		builds := 0
		for line := range strings.Lines(string(text)) {
			if !strings.Contains(line, " build ") || !strings.Contains(line, "./cmd/") {
				continue
			}
			builds++
			for _, want := range append([]string{"CGO_ENABLED=0"}, Flags...) {
				if !strings.Contains(strings.ReplaceAll(line, "'", ""), want) {
					t.Errorf("%s: %q lacks %s", file, strings.TrimSpace(line), want)
				}
			}
		}
		if builds == 0 {
			t.Errorf("%s: no build of ./cmd/ found", file)
		}
	}
}
