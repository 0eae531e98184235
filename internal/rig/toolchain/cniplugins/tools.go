//go:build tools

// Package tools pins the reference CNI plugins that warmpool's tests chain
// with (macvlan as the interface plugin; static and host-local as baseline
// IPAMs). They are built from here into the binary cache, never vendored.
package tools

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/ipam/static"
	_ "github.com/containernetworking/plugins/plugins/main/macvlan"
)
