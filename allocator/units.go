package allocator

import (
	"fmt"
	"math"
	"math/big"
	"net/netip"
	"slices"

	"github.com/warmpool/warmpool/api/v1alpha1"
)

// MaxUnitsPerPool bounds how many units of one pool the allocator
// materialises. A dual-stack pool's size is its IPv4 count (a /16 at most,
// in practice); an IPv6-only /64 would be 2^64 units, of which only the
// first MaxUnitsPerPool are ever handed out. Status still reports the true
// (saturated) total.
const MaxUnitsPerPool = 1 << 16

// Unit is one allocation unit of a pool: an address, or an IPv4/IPv6 pair.
type Unit struct {
	IPv4, IPv6 netip.Addr
}

// ID is the unit's primary address, its key within the pool: the IPv4, or
// the IPv6 of an IPv6-only pool.
func (u Unit) ID() string {
	if u.IPv4.IsValid() {
		return u.IPv4.String()
	}
	return u.IPv6.String()
}

// PoolUnits are the allocatable units of a pool, in order, with the
// network parameters an agent needs to answer an ADD.
type PoolUnits struct {
	Units []Unit
	// Total is the number of units the pool's subnets allow, saturated at
	// math.MaxInt64 (more than len(Units) for a huge IPv6-only pool).
	Total int64
}

// Enumerate lists the allocatable units of a pool: per family, the
// addresses of its ranges (the whole subnet when there are none) in
// ascending order, minus the network address, the IPv4 broadcast address,
// the gateway and the exclusions. A dual-stack pool pairs the i-th IPv4
// address with the i-th IPv6 address; it has as many units as the smaller
// family has addresses.
//
// Example: ipv4 10.0.0.0/29, gateway 10.0.0.1, exclude 10.0.0.4 gives
// 10.0.0.2, .3, .5, .6 (.0 is the network, .7 the broadcast); with ipv6
// fd00::/125 (fd00::1 to fd00::7 usable), the units are (10.0.0.2, fd00::1),
// (.3, fd00::2), (.5, fd00::3), (.6, fd00::4).
func Enumerate(spec v1alpha1.IPPoolSpec) (PoolUnits, error) {
	var v4, v6 []netip.Addr
	var n4, n6 *big.Int
	var err error
	if spec.IPv4 != nil {
		if v4, n4, err = addresses(spec.IPv4, MaxUnitsPerPool); err != nil {
			return PoolUnits{}, fmt.Errorf("ipv4: %w", err)
		}
	}
	if spec.IPv6 != nil {
		limit := MaxUnitsPerPool
		if spec.IPv4 != nil {
			limit = len(v4) // only as many as can be paired
		}
		if v6, n6, err = addresses(spec.IPv6, limit); err != nil {
			return PoolUnits{}, fmt.Errorf("ipv6: %w", err)
		}
	}
	var pu PoolUnits
	switch {
	case spec.IPv4 != nil && spec.IPv6 != nil:
		n := min(len(v4), len(v6))
		for i := range n {
			pu.Units = append(pu.Units, Unit{IPv4: v4[i], IPv6: v6[i]})
		}
		pu.Total = saturate(minBig(n4, n6))
	case spec.IPv4 != nil:
		for _, a := range v4 {
			pu.Units = append(pu.Units, Unit{IPv4: a})
		}
		pu.Total = saturate(n4)
	case spec.IPv6 != nil:
		for _, a := range v6 {
			pu.Units = append(pu.Units, Unit{IPv6: a})
		}
		pu.Total = saturate(n6)
	default:
		return PoolUnits{}, fmt.Errorf("a pool needs ipv4, ipv6 or both")
	}
	return pu, nil
}

// addresses returns up to limit allocatable addresses of a subnet, in
// order, and how many there are in all.
func addresses(s *v1alpha1.Subnet, limit int) ([]netip.Addr, *big.Int, error) {
	prefix, err := netip.ParsePrefix(s.CIDR)
	if err != nil {
		return nil, nil, fmt.Errorf("cidr %q: %w", s.CIDR, err)
	}
	prefix = prefix.Masked()
	never := map[netip.Addr]bool{prefix.Addr(): true}
	if prefix.Addr().Is4() {
		never[LastAddr(prefix)] = true
	}
	if s.Gateway != "" {
		gw, err := netip.ParseAddr(s.Gateway)
		if err != nil {
			return nil, nil, fmt.Errorf("gateway %q: %w", s.Gateway, err)
		}
		never[gw] = true
	}
	var excluded []netip.Prefix
	for _, x := range s.Exclude {
		p, err := netip.ParsePrefix(x)
		if err != nil {
			a, aerr := netip.ParseAddr(x)
			if aerr != nil {
				return nil, nil, fmt.Errorf("exclude %q: not an address or CIDR", x)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		excluded = append(excluded, p.Masked())
	}
	type span struct{ first, last netip.Addr }
	var spans []span
	if len(s.Ranges) == 0 {
		spans = []span{{prefix.Addr(), LastAddr(prefix)}}
	}
	for _, r := range s.Ranges {
		first, err1 := netip.ParseAddr(r.Start)
		last, err2 := netip.ParseAddr(r.End)
		if err1 != nil || err2 != nil || last.Less(first) || !prefix.Contains(first) || !prefix.Contains(last) {
			return nil, nil, fmt.Errorf("range %s-%s is not an ordered range inside %s", r.Start, r.End, prefix)
		}
		spans = append(spans, span{first, last})
	}
	// Ranges may be listed in any order; hand out in ascending order.
	slices.SortFunc(spans, func(a, b span) int { return a.first.Compare(b.first) })
	total := new(big.Int)
	var out []netip.Addr
	truncated := false
	for _, sp := range spans {
		size := new(big.Int).Sub(addrInt(sp.last), addrInt(sp.first))
		size.Add(size, big.NewInt(1))
		total.Add(total, size)
		for a := sp.first; ; {
			// An excluded prefix is stepped over in one jump: an IPv6 /64
			// excluding a /80 must not walk 2^48 addresses.
			if p, ok := containing(excluded, a); ok {
				end := LastAddr(p)
				if !end.Less(sp.last) {
					break
				}
				a = end.Next()
				continue
			}
			if !never[a] {
				if len(out) == limit {
					truncated = true
					break
				}
				out = append(out, a)
			}
			if a == sp.last {
				break
			}
			a = a.Next()
		}
	}
	if !truncated {
		return out, big.NewInt(int64(len(out))), nil
	}
	// Too many to list: count arithmetically, taking out what is skipped
	// (exact unless exclusions overlap each other).
	for a := range never {
		for _, sp := range spans {
			if !a.Less(sp.first) && !sp.last.Less(a) && !inAny(excluded, a) {
				total.Sub(total, big.NewInt(1))
				break
			}
		}
	}
	for _, p := range excluded {
		for _, sp := range spans {
			total.Sub(total, overlap(p, sp.first, sp.last))
		}
	}
	if total.Sign() < 0 {
		total.SetInt64(0)
	}
	return out, total, nil
}

// containing returns the widest excluded prefix holding a.
func containing(ps []netip.Prefix, a netip.Addr) (netip.Prefix, bool) {
	var best netip.Prefix
	found := false
	for _, p := range ps {
		if p.Contains(a) && (!found || p.Bits() < best.Bits()) {
			best, found = p, true
		}
	}
	return best, found
}

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// overlap counts the addresses of p within [first, last].
func overlap(p netip.Prefix, first, last netip.Addr) *big.Int {
	lo, hi := p.Addr(), LastAddr(p)
	if lo.Less(first) {
		lo = first
	}
	if last.Less(hi) {
		hi = last
	}
	if hi.Less(lo) {
		return new(big.Int)
	}
	n := new(big.Int).Sub(addrInt(hi), addrInt(lo))
	return n.Add(n, big.NewInt(1))
}

// LastAddr is the last address of p: its broadcast address in IPv4.
func LastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		for j := range 8 {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func addrInt(a netip.Addr) *big.Int { return new(big.Int).SetBytes(a.AsSlice()) }

func minBig(a, b *big.Int) *big.Int {
	if a.Cmp(b) < 0 {
		return a
	}
	return b
}

func saturate(n *big.Int) int64 {
	if !n.IsInt64() {
		return math.MaxInt64
	}
	return n.Int64()
}
