// Package images builds warmpool's two container images from the binaries
// `make build` wrote, without docker or a registry: one layer over nothing,
// written as an image tarball (docker's save format) that docker and
// podman load, containerd imports (`ctr -n k8s.io images import`), kind
// loads (`kind load image-archive`) and crane pushes. The Dockerfiles
// beside this file build the same images on distroless for those who use
// docker; TestImagesAgreeWithDockerfiles holds the two together.
package images

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/warmpool/warmpool/internal/rig/gobuild"
)

// Spec is what one image holds.
type Spec struct {
	// Name names the image and its entrypoint, /<Name>.
	Name string
	// Binaries are files of the bin directory, each installed at /<file>.
	Binaries []string
	// User runs the entrypoint, as uid:gid.
	User string
}

// Specs are warmpool's images. The agent runs as root: it writes host
// paths that root owns (the socket, its record, the plugin in
// /opt/cni/bin), and its image carries the plugin that its init container
// (`warmpool-agent install-cni`) copies to the node. The allocator runs as
// the nonroot uid the Deployment names.
var Specs = []Spec{
	{Name: "warmpool-allocator", Binaries: []string{"warmpool-allocator"}, User: "65532:65532"},
	{Name: "warmpool-agent", Binaries: []string{"warmpool-agent", "warmpool"}, User: "0:0"},
}

// CACertificatesPath is where the image holds the CA bundle, as Debian
// and distroless do; Go's crypto/x509 looks there on Linux.
const CACertificatesPath = "/etc/ssl/certs/ca-certificates.crt"

// Options say where the image's files come from.
type Options struct {
	// BinDir holds the binaries, static (CGO_ENABLED=0): the image has no
	// libc.
	BinDir string
	// CACertificates is a PEM bundle installed at CACertificatesPath, for
	// TLS to a server whose CA the manifests do not give (an external NATS
	// with a public certificate); "" installs none.
	CACertificates string
}

// Build makes the image of s: its files in one layer, its entrypoint and
// user in its config, its platform the binaries' own (a runtime imports
// only images of its platform by default), and no creation time, so that
// the same binaries give the same digest.
func (s Spec) Build(o Options) (v1.Image, error) {
	arch, err := s.arch(o.BinDir)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Name, err)
	}
	layer, err := s.layer(o)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Name, err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Name, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Name, err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", arch
	cfg.Config.Entrypoint = []string{"/" + s.Name}
	cfg.Config.User = s.User
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Name, err)
	}
	return img, nil
}

// goarch names the ELF machines Go builds for, as GOARCH does.
var goarch = map[elf.Machine]string{
	elf.EM_X86_64:  "amd64",
	elf.EM_AARCH64: "arm64",
	elf.EM_386:     "386",
	elf.EM_ARM:     "arm",
	elf.EM_PPC64:   "ppc64le",
	elf.EM_S390:    "s390x",
	elf.EM_RISCV:   "riscv64",
}

// arch reads the binaries' architecture from their ELF headers, and
// refuses a binary that needs a dynamic loader: the image has no libc.
func (s Spec) arch(binDir string) (string, error) {
	var arch string
	for _, b := range s.Binaries {
		path := filepath.Join(binDir, b)
		if err := gobuild.CheckStatic(path); err != nil {
			return "", fmt.Errorf("binary %s (make build writes it): %w", b, err)
		}
		f, err := elf.Open(path)
		if err != nil {
			return "", fmt.Errorf("binary %s: %w", b, err)
		}
		machine := f.Machine
		f.Close()
		a, ok := goarch[machine]
		if !ok {
			return "", fmt.Errorf("binary %s: machine %v is not one Go builds for", b, machine)
		}
		if arch != "" && a != arch {
			return "", fmt.Errorf("binary %s is for %s, %s for %s", b, a, s.Binaries[0], arch)
		}
		arch = a
	}
	return arch, nil
}

// layer is the image's one layer: the binaries, the CA bundle, a /tmp, and
// passwd and group entries for the users the images run as (a tool that
// looks a uid up finds a name; the binaries do not need one).
func (s Spec) layer(o Options) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// A fixed time: the layer's digest depends on the files' contents only.
	mtime := time.Unix(0, 0)
	dir := func(path string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: path, Mode: mode, ModTime: mtime})
	}
	file := func(path string, mode int64, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: path, Mode: mode, Size: int64(len(b)), ModTime: mtime}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	for _, b := range s.Binaries {
		data, err := os.ReadFile(filepath.Join(o.BinDir, b))
		if err != nil {
			return nil, fmt.Errorf("binary %s (make build writes it): %w", b, err)
		}
		if err := file(b, 0o755, data); err != nil {
			return nil, err
		}
	}
	if err := dir("etc/", 0o755); err != nil {
		return nil, err
	}
	if err := file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")); err != nil {
		return nil, err
	}
	if err := file("etc/group", 0o644, []byte("root:x:0:\nnonroot:x:65532:\n")); err != nil {
		return nil, err
	}
	if o.CACertificates != "" {
		pem, err := os.ReadFile(o.CACertificates)
		if err != nil {
			return nil, fmt.Errorf("CA certificates: %w", err)
		}
		for _, d := range []string{"etc/ssl/", "etc/ssl/certs/"} {
			if err := dir(d, 0o755); err != nil {
				return nil, err
			}
		}
		if err := file(CACertificatesPath[1:], 0o644, pem); err != nil {
			return nil, err
		}
	}
	if err := dir("tmp/", 0o1777); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
}

// Write writes img as a tarball at path, under each of tags; a failed
// write leaves no file there.
func Write(path string, img v1.Image, tags ...name.Tag) error {
	refs := map[name.Reference]v1.Image{}
	for _, t := range tags {
		refs[t] = img
	}
	tmp := path + ".tmp"
	if err := tarball.MultiRefWriteToFile(tmp, refs); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
