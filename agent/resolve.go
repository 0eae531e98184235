package agent

import (
	"context"
	"fmt"

	"github.com/warmpool/warmpool/agent/wire"
)

// StaticResolver resolves a pod's pool without the API: the netconf's pool,
// else Default. It knows the pools in Known and refuses others. It serves
// tests, as if every pod were selected by the pools its networks name; the
// informer-backed resolver (annotations, selectors) replaces it in the
// agent binary.
type StaticResolver struct {
	Default string
	Known   map[string]bool
}

// Resolve implements PoolResolver.
func (r StaticResolver) Resolve(_ context.Context, pod wire.Pod, netconfPool string) (string, *wire.Error) {
	pool := netconfPool
	if pool == "" {
		pool = r.Default
	}
	if pool == "" {
		return "", &wire.Error{Code: wire.CodeNoPool, Msg: fmt.Sprintf("no pool for pod %s/%s", pod.Namespace, pod.Name),
			Details: "name one in the network config's ipam.pool"}
	}
	if !r.Known[pool] {
		return "", &wire.Error{Code: wire.CodeUnknownPool, Msg: fmt.Sprintf("pool %q does not exist", pool),
			Details: "create the IPPool or fix ipam.pool in the network config"}
	}
	return pool, nil
}
