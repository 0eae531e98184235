// Command coredns is CoreDNS with only the plugins a real test node's
// cluster DNS needs: the kubernetes plugin serves cluster.local from the
// apiserver, and nothing forwards, so that no lookup leaves the machine
// (any other name is refused). The agent resolves the bus's Service name
// through it, as it does in a cluster.
package main

import (
	"fmt"
	"os"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	// In the execution order of CoreDNS's plugin.cfg.
	if err := dnsserver.SetDirectives([]string{"bind", "ready", "health", "errors", "log", "cache", "kubernetes"}); err != nil {
		fmt.Fprintln(os.Stderr, "coredns:", err)
		os.Exit(2)
	}
	coremain.Run()
}
