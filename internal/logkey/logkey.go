// Package logkey formats the values of the fields warmpool's log lines
// share, so that each is written one way in every component: an operator
// filters a node's, a pod's or an address's lines across the agents and
// the allocator with one query (docs/operator-guide.md, "Reading the
// logs"). The keys themselves are plain literals at the call sites; the
// test of this package holds every key in agent/, allocator/, broker/,
// cni/, cmd/ and internal/metrics to one spelling.
//
// The shared fields:
//
//	pod         namespace/name (Pod)
//	pod_uid     the pod's UID
//	node        the node's name
//	pool        the IPPool's name
//	address     a unit's addresses, IPv4 first, comma-separated (Address)
//	epoch       a leader epoch
//	attachment  containerID/ifname: the key of an assignment
//	err         the error
package logkey

// Pod is the value of the pod field: namespace/name, or "" when neither
// is known (a DEL from a runtime that did not pass CNI_ARGS).
func Pod(namespace, name string) string {
	if namespace == "" && name == "" {
		return ""
	}
	return namespace + "/" + name
}

// Address is the value of the address field: a unit's addresses, IPv4
// first, comma-separated ("10.0.0.5,fd00::5"), so that a filter on either
// family's address finds the unit's lines.
func Address(ipv4, ipv6 string) string {
	switch {
	case ipv4 == "":
		return ipv6
	case ipv6 == "":
		return ipv4
	}
	return ipv4 + "," + ipv6
}
