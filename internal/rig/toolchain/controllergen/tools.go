//go:build tools

// Package tools pins controller-gen, which `make generate` runs to write the
// CRD manifests and deepcopy functions of warmpool's API.
package tools

import _ "sigs.k8s.io/controller-tools/cmd/controller-gen"
