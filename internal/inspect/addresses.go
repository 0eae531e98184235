package inspect

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/warmpool/warmpool/allocator"
	"github.com/warmpool/warmpool/api/v1alpha1"
)

// poolIndex knows, for each pool, which addresses are its allocatable
// units, as the allocator enumerates them (allocator.Enumerate: the same
// ranges, exclusions and dual-stack pairing).
type poolIndex struct {
	pools []*poolInfo
}

type poolInfo struct {
	name     string
	prefixes []netip.Prefix
	spec     v1alpha1.IPPoolSpec
	// units by each of their addresses; err when the spec cannot be
	// enumerated (the apiserver's validation makes that rare).
	units map[netip.Addr]allocator.Unit
	err   error
}

func indexPools(pools []v1alpha1.IPPool) *poolIndex {
	ix := &poolIndex{}
	for _, p := range pools {
		pi := &poolInfo{name: p.Name, spec: p.Spec, units: map[netip.Addr]allocator.Unit{}}
		for _, s := range []*v1alpha1.Subnet{p.Spec.IPv4, p.Spec.IPv6} {
			if s == nil {
				continue
			}
			if pre, err := netip.ParsePrefix(s.CIDR); err == nil {
				pi.prefixes = append(pi.prefixes, pre)
			}
		}
		pu, err := allocator.Enumerate(p.Spec)
		pi.err = err
		for _, u := range pu.Units {
			if u.IPv4.IsValid() {
				pi.units[u.IPv4] = u
			}
			if u.IPv6.IsValid() {
				pi.units[u.IPv6] = u
			}
		}
		ix.pools = append(ix.pools, pi)
	}
	return ix
}

func (ix *poolIndex) get(name string) *poolInfo {
	for _, p := range ix.pools {
		if p.name == name {
			return p
		}
	}
	return nil
}

// containing returns the pools whose subnets contain a.
func (ix *poolIndex) containing(a netip.Addr) []*poolInfo {
	var out []*poolInfo
	for _, p := range ix.pools {
		for _, pre := range p.prefixes {
			if pre.Contains(a) {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// allocating returns the pools of which a is one of the units: the
// addresses warmpool hands out. An address only in a pool's subnet (its
// gateway, an exclusion such as the nodes' own addresses, outside its
// ranges) is never given to a pod by warmpool.
func (ix *poolIndex) allocating(a netip.Addr) []*poolInfo {
	var out []*poolInfo
	for _, p := range ix.pools {
		if _, ok := p.unitOf(a); ok {
			out = append(out, p)
		}
	}
	return out
}

// unitOf returns the pool's unit that has address a.
func (p *poolInfo) unitOf(a netip.Addr) (allocator.Unit, bool) {
	u, ok := p.units[a]
	return u, ok
}

// checkUnit says whether a leased unit is one of the pool's units, both
// addresses paired as the allocator pairs them; "" when it is.
func (p *poolInfo) checkUnit(u v1alpha1.LeasedUnit) string {
	var want allocator.Unit
	found := false
	for _, s := range []string{u.IPv4, u.IPv6} {
		if s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Sprintf("%q is not an address", s)
		}
		got, ok := p.unitOf(a.Unmap())
		if !ok {
			return fmt.Sprintf("%s is not an allocatable address of pool %s (%s)", s, p.name, p.whyNot(a.Unmap()))
		}
		if found && got != want {
			return fmt.Sprintf("%s and %s are not paired in pool %s (the pool pairs %s with %s)", u.IPv4, u.IPv6, p.name, want.IPv4, want.IPv6)
		}
		want, found = got, true
	}
	if !found {
		return "the unit has no address"
	}
	if (want.IPv4.IsValid() != (u.IPv4 != "")) || (want.IPv6.IsValid() != (u.IPv6 != "")) {
		return fmt.Sprintf("pool %s's unit is %s, the lease lists %s", p.name, unitString(want.IPv4.String(), want.IPv6.String()), unitString(u.IPv4, u.IPv6))
	}
	return ""
}

// whyNot says why an address in or near the pool's subnets is not one of
// its units.
func (p *poolInfo) whyNot(a netip.Addr) string {
	if p.err != nil {
		return "the pool's addresses cannot be enumerated: " + p.err.Error()
	}
	var s *v1alpha1.Subnet
	if a.Is4() {
		s = p.spec.IPv4
	} else {
		s = p.spec.IPv6
	}
	if s == nil {
		return "the pool has no address of that family"
	}
	pre, err := netip.ParsePrefix(s.CIDR)
	switch {
	case err != nil || !pre.Contains(a):
		return "outside its subnet " + s.CIDR
	case a == pre.Masked().Addr():
		return "the subnet's network address"
	case a.Is4() && a == allocator.LastAddr(pre):
		return "the subnet's broadcast address"
	case sameAddr(s.Gateway, a):
		return "the pool's gateway"
	}
	for _, x := range s.Exclude {
		if xp, err := netip.ParsePrefix(x); err == nil && xp.Contains(a) || sameAddr(x, a) {
			return "excluded by " + x
		}
	}
	if len(s.Ranges) > 0 {
		in := false
		for _, r := range s.Ranges {
			lo, err1 := netip.ParseAddr(r.Start)
			hi, err2 := netip.ParseAddr(r.End)
			if err1 == nil && err2 == nil && a.Compare(lo) >= 0 && a.Compare(hi) <= 0 {
				in = true
			}
		}
		if !in {
			return "outside the pool's ranges"
		}
	}
	if p.spec.IPv4 != nil && p.spec.IPv6 != nil {
		return "beyond the pairs of the dual-stack pool (the larger family's surplus is not used)"
	}
	return fmt.Sprintf("beyond the first %d units the allocator hands out", allocator.MaxUnitsPerPool)
}

func unitString(v4, v6 string) string {
	switch {
	case v4 != "" && v6 != "":
		return v4 + "/" + v6
	case v4 != "":
		return v4
	}
	return v6
}

// PodAddress is an address a pod reports, and where.
type PodAddress struct {
	Addr netip.Addr
	// Source is "status.podIPs" or "network-status <network> <interface>".
	Source string
}

// podAddresses returns the addresses a pod reports: status.podIPs (the
// primary network; the test rig's simulated kubelet puts warmpool's
// address there) and Multus' network-status annotation (secondary
// interfaces, where warmpool's address is with Multus). An address in both
// is listed once, with both sources. A malformed annotation is returned as
// an error beside what podIPs gave.
//
// A host-network pod reports none: its podIPs are its node's addresses
// (on the pool's segment with the shipped macvlan config), no CNI ADD
// runs for it, and so warmpool never gives it an address.
func podAddresses(p *corev1.Pod) ([]PodAddress, error) {
	if p.Spec.HostNetwork {
		return nil, nil
	}
	var out []PodAddress
	seen := map[netip.Addr]int{}
	add := func(s, src string) {
		a, err := ParseAddress(s)
		if err != nil {
			return
		}
		if i, ok := seen[a]; ok {
			if !strings.Contains(out[i].Source, src) {
				out[i].Source += ", " + src
			}
			return
		}
		seen[a] = len(out)
		out = append(out, PodAddress{Addr: a, Source: src})
	}
	for _, ip := range p.Status.PodIPs {
		add(ip.IP, "status.podIPs")
	}
	v, ok := p.Annotations[NetworkStatusAnnotation]
	if !ok {
		return out, nil
	}
	st, err := ParseNetworkStatus(v)
	if err != nil {
		return out, err
	}
	for _, n := range st {
		for _, ip := range n.IPs {
			add(ip, strings.TrimSpace("network-status "+n.Name+" "+n.Interface))
		}
	}
	return out, nil
}

// podIsLive reports whether a pod may hold an address: not being deleted
// and not finished (the allocator's GC treats a finished pod's assignment
// as a leak too).
func podIsLive(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && !podFinished(p)
}
