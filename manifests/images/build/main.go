// Command build writes warmpool's images (package images) as tarballs:
// `make images`, after `make build`.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/warmpool/warmpool/manifests/images"
)

func main() {
	binDir := flag.String("bin-dir", "bin", "directory of the binaries (make build)")
	repo := flag.String("repo", "ghcr.io/warmpool", "repository the images are named in")
	tag := flag.String("tag", "", "the images' tag (required)")
	out := flag.String("out", "bin/images", "directory the tarballs are written to, one per image: <name>.tar")
	ca := flag.String("ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "PEM CA bundle the images hold at "+images.CACertificatesPath+" (Debian's ca-certificates); '' for none")
	flag.Parse()
	if err := run(*binDir, *repo, *tag, *out, *ca); err != nil {
		slog.Error("images", "err", err)
		os.Exit(1)
	}
}

func run(binDir, repo, tag, out, ca string) error {
	if tag == "" {
		return fmt.Errorf("--tag is required")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, s := range images.Specs {
		ref, err := name.NewTag(repo + "/" + s.Name + ":" + tag)
		if err != nil {
			return fmt.Errorf("image %s: %w", s.Name, err)
		}
		img, err := s.Build(images.Options{BinDir: binDir, CACertificates: ca})
		if err != nil {
			return err
		}
		path := filepath.Join(out, s.Name+".tar")
		if err := images.Write(path, img, ref); err != nil {
			return err
		}
		digest, err := img.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("%s\t%s\t%s\n", path, ref, digest)
	}
	return nil
}
