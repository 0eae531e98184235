//go:build tools

// Package tools pins etcd's server module for warmpool's local test control
// plane. It is a separate module because etcd's server module carries
// replace directives that stop a plain `go install`; building
// go.etcd.io/etcd/server/v3 from here produces the real etcd binary.
package tools

import _ "go.etcd.io/etcd/server/v3"
