//go:build tools

// Package tools pins the container runtime of the real node that
// `make test-node` runs (containerd, its runc shim, and ctr to import
// images). They are built from here into the binary cache, never vendored.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
