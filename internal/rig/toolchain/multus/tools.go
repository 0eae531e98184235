//go:build tools

// Package tools pins Multus, the meta-plugin a real test node's containerd
// calls: it runs the pod's cluster network and then the attachments its
// annotation names (macvlan with warmpool as IPAM). Only the thin plugin
// (cmd/multus) is built, into the binary cache.
package tools

import (
	_ "gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/multus"
)
