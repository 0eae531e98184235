//go:build tools

// Package tools pins the reference CNI plugins that warmpool's tests chain
// with (macvlan as the interface plugin; static and host-local as baseline
// IPAMs), and the ones a real test node's cluster network runs (bridge,
// loopback, portmap). They are built from here into the binary cache,
// never vendored.
package tools

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/ipam/static"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/main/macvlan"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
)
