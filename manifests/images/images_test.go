package images

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// binDir builds warmpool's binaries as make build does into one directory.
func binDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range []string{"warmpool", "warmpool-agent", "warmpool-allocator"} {
		b, err := os.ReadFile(testenv.Binary(t, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

type entry struct {
	*tar.Header
	data []byte
}

// files reads an image's filesystem: each entry's header and contents.
func files(t *testing.T, r io.Reader) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimSuffix(h.Name, "/")] = entry{h, data}
	}
}

func TestImagesHoldTheirBinaries(t *testing.T) {
	bin := binDir(t)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	for _, s := range Specs {
		t.Run(s.Name, func(t *testing.T) {
			img, err := s.Build(Options{BinDir: bin, CACertificates: ca})
			if err != nil {
				t.Fatal(err)
			}
			ref, err := name.NewTag("example.org/warmpool/" + s.Name + ":v9")
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(out, s.Name+".tar")
			if err := Write(path, img, ref); err != nil {
				t.Fatal(err)
			}
			// Read back what a runtime imports: the tarball, by its tag.
			got, err := tarball.ImageFromPath(path, &ref)
			if err != nil {
				t.Fatalf("the tarball has no image tagged %s: %v", ref, err)
			}
			cfg, err := got.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
				t.Errorf("platform %s/%s, want linux/%s", cfg.OS, cfg.Architecture, runtime.GOARCH)
			}
			if want := []string{"/" + s.Name}; !slices.Equal(cfg.Config.Entrypoint, want) {
				t.Errorf("entrypoint %v, want %v", cfg.Config.Entrypoint, want)
			}
			if cfg.Config.User != s.User {
				t.Errorf("user %q, want %q", cfg.Config.User, s.User)
			}
			fs := mutate.Extract(got)
			defer fs.Close()
			hs := files(t, fs)
			for _, b := range s.Binaries {
				h, ok := hs[b]
				if !ok {
					t.Fatalf("no /%s in the image", b)
				}
				want, err := os.ReadFile(filepath.Join(bin, b))
				if err != nil {
					t.Fatal(err)
				}
				if h.Mode != 0o755 || !bytes.Equal(h.data, want) {
					t.Errorf("/%s: mode %o, %d bytes; want 755 and the %d bytes of the binary", b, h.Mode, len(h.data), len(want))
				}
			}
			for _, f := range []string{"etc/passwd", "etc/group", CACertificatesPath[1:], "tmp"} {
				if _, ok := hs[f]; !ok {
					t.Errorf("no /%s in the image", f)
				}
			}
			if uid, _, _ := strings.Cut(s.User, ":"); !strings.Contains(string(hs["etc/passwd"].data), ":x:"+uid+":") {
				t.Errorf("/etc/passwd has no user %s", uid)
			}
			// The same binaries give the same image.
			again, err := s.Build(Options{BinDir: bin, CACertificates: ca})
			if err != nil {
				t.Fatal(err)
			}
			d1, err := img.Digest()
			if err != nil {
				t.Fatal(err)
			}
			d2, err := again.Digest()
			if err != nil {
				t.Fatal(err)
			}
			if d1 != d2 {
				t.Errorf("two builds of the same binaries: %s and %s", d1, d2)
			}
		})
	}
}

// TestBuildRefusesWhatWouldNotRun: an image without libc cannot run a
// binary that is missing, not an executable, or linked dynamically.
func TestBuildRefusesWhatWouldNotRun(t *testing.T) {
	dynamic, err := os.ReadFile("/bin/true") // Debian's: linked against libc
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		write func(dir string) error
		want  string
	}{
		{"missing", func(string) error { return nil }, "make build writes it"},
		{"not ELF", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, "warmpool-allocator"), []byte("#!/bin/sh\n"), 0o755)
		}, "make build writes it"},
		{"dynamic", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, "warmpool-allocator"), dynamic, 0o755)
		}, "dynamically linked"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := c.write(dir); err != nil {
				t.Fatal(err)
			}
			_, err := Specs[0].Build(Options{BinDir: dir})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Build: %v, want an error saying %q", err, c.want)
			}
		})
	}
	t.Run("missing CA bundle", func(t *testing.T) {
		_, err := Specs[0].Build(Options{BinDir: binDir(t), CACertificates: "/nonexistent/ca.pem"})
		if err == nil || !strings.Contains(err.Error(), "CA certificates") {
			t.Fatalf("Build: %v, want an error about the CA certificates", err)
		}
	})
}
