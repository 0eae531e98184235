// Command warmpool is the IPAM plugin binary the container runtime execs
// from its CNI bin directory.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/cni"
)

func main() {
	p := &cni.Plugin{Call: wire.Call}
	skel.PluginMainFuncs(p.Funcs(), cni.Versions, "warmpool IPAM: addresses from the node's warm cache")
}
