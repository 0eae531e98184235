//go:build tools

// Package tools pins runc, the OCI runtime under the real node's
// containerd (`make test-node`). It is built with cgo against Debian's
// libseccomp-dev, as runc's releases are, into the binary cache.
package tools

import (
	_ "github.com/opencontainers/runc"
)
