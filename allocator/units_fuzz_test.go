package allocator

import (
	"cmp"
	"fmt"
	"math"
	"math/big"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/warmpool/warmpool/api/v1alpha1"
)

// fuzzSubnet builds a Subnet from the fuzzer's strings: ranges as
// "start-end,start-end" (a lone address is a one-address range), exclude
// as "x,y". Lists are cut at a little above the CRD's maxima, which bound
// the work per address.
func fuzzSubnet(cidr, gw, ranges, exclude string) *v1alpha1.Subnet {
	s := &v1alpha1.Subnet{CIDR: cidr, Gateway: gw}
	if ranges != "" {
		for i, r := range strings.Split(ranges, ",") {
			if i == 12 {
				break
			}
			start, end, ok := strings.Cut(r, "-")
			if !ok {
				end = start
			}
			s.Ranges = append(s.Ranges, v1alpha1.IPRange{Start: start, End: end})
		}
	}
	if exclude != "" {
		s.Exclude = strings.Split(exclude, ",")
		if len(s.Exclude) > 64 {
			s.Exclude = s.Exclude[:64]
		}
	}
	return s
}

// want is what a subnet's addresses should be, computed independently of
// Enumerate's loop: excluded blocks are skipped whole, and counts are
// interval arithmetic.
type want struct {
	err       bool
	prefix    netip.Prefix
	gateway   netip.Addr
	excluded  []netip.Prefix
	spans     [][2]netip.Addr // sorted by start
	addrs     []netip.Addr    // the first allocatable addresses, up to the limit
	truncated bool            // more than the limit
	exact     *big.Int        // allocatable addresses in all
	// orderedSpans: no two ranges start at the same address, so their
	// order is defined. countable: no two ranges and no two exclusions
	// share an address and the gateway has no zone, so that Enumerate's
	// arithmetic for a subnet it lists only in part is exact.
	orderedSpans, disjointSpans, countable bool
}

func expect(s *v1alpha1.Subnet, limit int) want {
	var w want
	p, err := netip.ParsePrefix(s.CIDR)
	if err != nil {
		return want{err: true}
	}
	w.prefix = p.Masked()
	if s.Gateway != "" {
		if w.gateway, err = netip.ParseAddr(s.Gateway); err != nil {
			return want{err: true}
		}
	}
	for _, x := range s.Exclude {
		xp, err := netip.ParsePrefix(x)
		if err != nil {
			a, aerr := netip.ParseAddr(x)
			if aerr != nil {
				return want{err: true}
			}
			xp = netip.PrefixFrom(a, a.BitLen())
		}
		w.excluded = append(w.excluded, xp.Masked())
	}
	if len(s.Ranges) == 0 {
		w.spans = [][2]netip.Addr{{w.prefix.Addr(), LastAddr(w.prefix)}}
	}
	for _, r := range s.Ranges {
		a, err1 := netip.ParseAddr(r.Start)
		b, err2 := netip.ParseAddr(r.End)
		if err1 != nil || err2 != nil || b.Less(a) || !w.prefix.Contains(a) || !w.prefix.Contains(b) {
			return want{err: true}
		}
		w.spans = append(w.spans, [2]netip.Addr{a, b})
	}
	slices.SortStableFunc(w.spans, func(x, y [2]netip.Addr) int { return x[0].Compare(y[0]) })
	w.orderedSpans, w.disjointSpans, w.countable = true, true, w.gateway.Zone() == ""
	for i := 1; i < len(w.spans); i++ {
		if !w.spans[i-1][1].Less(w.spans[i][0]) {
			w.disjointSpans, w.countable = false, false
		}
		if w.spans[i-1][0] == w.spans[i][0] {
			w.orderedSpans = false
		}
	}
	for i, x := range w.excluded {
		for _, y := range w.excluded[:i] {
			if x.Overlaps(y) {
				w.countable = false
			}
		}
	}
	never := func(a netip.Addr) bool {
		return a.IsValid() && (a == w.prefix.Addr() || a.Is4() && a == LastAddr(w.prefix) || a == w.gateway)
	}
	// blockEnd is the last address of the excluded blocks that hold a
	// (several may nest or overlap), or false when none does.
	blockEnd := func(a netip.Addr) (netip.Addr, bool) {
		var end netip.Addr
		for _, x := range w.excluded {
			if x.Contains(a) && (!end.IsValid() || end.Less(LastAddr(x))) {
				end = LastAddr(x)
			}
		}
		return end, end.IsValid()
	}
	w.exact = new(big.Int)
	for _, sp := range w.spans {
		// Count: the span minus the union of what is skipped in it.
		var holes [][2]netip.Addr
		for _, x := range w.excluded {
			lo, hi := x.Addr(), LastAddr(x)
			if lo.BitLen() != sp[0].BitLen() || hi.Less(sp[0]) || sp[1].Less(lo) {
				continue
			}
			holes = append(holes, [2]netip.Addr{maxAddr(lo, sp[0]), minAddr(hi, sp[1])})
		}
		for _, a := range []netip.Addr{w.prefix.Addr(), LastAddr(w.prefix), w.gateway} {
			if never(a) && a.Zone() == "" && !a.Less(sp[0]) && !sp[1].Less(a) {
				holes = append(holes, [2]netip.Addr{a, a})
			}
		}
		slices.SortFunc(holes, func(x, y [2]netip.Addr) int { return cmp.Or(x[0].Compare(y[0]), x[1].Compare(y[1])) })
		n := span(sp[0], sp[1])
		var cur [2]netip.Addr
		for i, h := range holes {
			switch {
			case i == 0:
				cur = h
			case h[0].Compare(cur[1]) <= 0 || h[0] == cur[1].Next():
				cur[1] = maxAddr(cur[1], h[1])
			default:
				n.Sub(n, span(cur[0], cur[1]))
				cur = h
			}
		}
		if len(holes) > 0 {
			n.Sub(n, span(cur[0], cur[1]))
		}
		w.exact.Add(w.exact, n)

		// List, skipping excluded blocks whole. Past the limit, Enumerate
		// still walks each later range up to its first allocatable address.
		for a := sp[0]; ; {
			if end, ok := blockEnd(a); ok {
				end = minAddr(end, sp[1])
				if end == sp[1] {
					break
				}
				a = end.Next()
				continue
			}
			if !never(a) {
				if len(w.addrs) == limit || w.truncated {
					w.truncated = true
					break
				}
				w.addrs = append(w.addrs, a)
			}
			if a == sp[1] {
				break
			}
			a = a.Next()
		}
	}
	if !w.truncated && big.NewInt(int64(len(w.addrs))).Cmp(w.exact) != 0 {
		panic(fmt.Sprintf("expect: listing %v and count %s disagree for %+v", w.addrs, w.exact, s))
	}
	return w
}

func span(a, b netip.Addr) *big.Int {
	n := new(big.Int).Sub(addrInt(b), addrInt(a))
	return n.Add(n, big.NewInt(1))
}

func minAddr(a, b netip.Addr) netip.Addr {
	if b.Less(a) {
		return b
	}
	return a
}

func maxAddr(a, b netip.Addr) netip.Addr {
	if a.Less(b) {
		return b
	}
	return a
}

// canonicalAddr parses s as an address the apiserver's CEL ip library
// accepts as canonical: no zone, no IPv4-mapped IPv6, written as Go
// writes it.
func canonicalAddr(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || a.Is4In6() || a.String() != s {
		return netip.Addr{}, false
	}
	return a, true
}

func canonicalPrefix(s string) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Addr().Is4In6() || p.Masked() != p || p.String() != s {
		return netip.Prefix{}, false
	}
	return p, true
}

// admissible reports whether the apiserver would store this subnet in the
// family's field (the CRD's CEL rules, api/v1alpha1/types.go).
func admissible(s *v1alpha1.Subnet, is4 bool) bool {
	p, ok := canonicalPrefix(s.CIDR)
	if !ok || p.Addr().Is4() != is4 || len(s.Ranges) > 10 || len(s.Exclude) > 64 {
		return false
	}
	var spans [][2]netip.Addr
	for _, r := range s.Ranges {
		a, ok1 := canonicalAddr(r.Start)
		b, ok2 := canonicalAddr(r.End)
		if !ok1 || !ok2 || a.Is4() != is4 || b.Is4() != is4 || b.Less(a) || !p.Contains(a) || !p.Contains(b) {
			return false
		}
		spans = append(spans, [2]netip.Addr{a, b})
	}
	for i, x := range spans {
		for _, y := range spans[:i] {
			if !x[1].Less(y[0]) && !y[1].Less(x[0]) {
				return false
			}
		}
	}
	for _, x := range s.Exclude {
		if _, ok := canonicalAddr(x); !ok {
			if _, ok := canonicalPrefix(x); !ok {
				return false
			}
		}
	}
	if s.Gateway != "" {
		gw, ok := canonicalAddr(s.Gateway)
		if !ok || !p.Contains(gw) || gw == p.Addr() {
			return false
		}
	}
	return true
}

// FuzzEnumerate: for any pool spec, Enumerate never panics, and fails
// exactly when a CIDR, gateway, exclusion or range does not parse or a
// range is reversed or outside its subnet. Otherwise:
//
//   - it lists at most MaxUnitsPerPool units, and they are exactly the
//     first allocatable addresses of each family in ascending order of the
//     ranges (the whole subnet without ranges): never the network address,
//     the IPv4 broadcast address, the gateway or an excluded address, and
//     always inside the subnet and a range; a dual-stack pool pairs them,
//     as many as the smaller family has;
//   - with ranges that do not overlap (the apiserver refuses others) the
//     units are distinct and ascending;
//   - Total is the exact number of allocatable units (saturated), also for
//     a huge subnet listed only in part, when its exclusions do not overlap
//     each other; when they do, it may undercount (documented), never below
//     the units listed;
//   - for a spec the apiserver admits, each unit's addresses are of their
//     field's family.
//
// An excluded block is stepped over in one jump: the seed
// v6-huge-exclusion (a /64 excluding a /80) hung the allocator, holding its
// lock, before that (found by this fuzzer).
func FuzzEnumerate(f *testing.F) {
	f.Add(uint8(3), "10.0.0.0/29", "10.0.0.1", "", "10.0.0.4", "fd00::/125", "", "", "")
	f.Fuzz(func(t *testing.T, fam uint8, cidr4, gw4, ranges4, excl4, cidr6, gw6, ranges6, excl6 string) {
		var spec v1alpha1.IPPoolSpec
		if fam&1 != 0 {
			spec.IPv4 = fuzzSubnet(cidr4, gw4, ranges4, excl4)
		}
		if fam&2 != 0 {
			spec.IPv6 = fuzzSubnet(cidr6, gw6, ranges6, excl6)
		}
		var w4, w6 want
		if spec.IPv4 != nil {
			w4 = expect(spec.IPv4, MaxUnitsPerPool)
		}
		if spec.IPv6 != nil {
			limit := MaxUnitsPerPool
			if spec.IPv4 != nil {
				limit = len(w4.addrs)
			}
			w6 = expect(spec.IPv6, limit)
		}
		wantErr := spec.IPv4 == nil && spec.IPv6 == nil || w4.err || w6.err

		pu, err := Enumerate(spec)
		if (err != nil) != wantErr {
			t.Fatalf("Enumerate(%s): error %v, want error %v", show(spec), err, wantErr)
		}
		if err != nil {
			return
		}
		if len(pu.Units) > MaxUnitsPerPool {
			t.Fatalf("%d units listed, more than %d", len(pu.Units), MaxUnitsPerPool)
		}

		// The listing.
		var v4, v6 []netip.Addr
		for _, u := range pu.Units {
			if u.IPv4.IsValid() != (spec.IPv4 != nil) || u.IPv6.IsValid() != (spec.IPv6 != nil) {
				t.Fatalf("unit %+v of a pool with ipv4 %v, ipv6 %v", u, spec.IPv4 != nil, spec.IPv6 != nil)
			}
			if id := u.ID(); spec.IPv4 != nil && id != u.IPv4.String() || spec.IPv4 == nil && id != u.IPv6.String() {
				t.Fatalf("unit %+v has ID %s", u, id)
			}
			if u.IPv4.IsValid() {
				v4 = append(v4, u.IPv4)
			}
			if u.IPv6.IsValid() {
				v6 = append(v6, u.IPv6)
			}
		}
		n := len(w4.addrs)
		switch {
		case spec.IPv4 != nil && spec.IPv6 != nil:
			n = min(len(w4.addrs), len(w6.addrs))
		case spec.IPv6 != nil:
			n = len(w6.addrs)
		}
		if len(pu.Units) != n {
			t.Fatalf("%s: %d units, want %d", show(spec), len(pu.Units), n)
		}
		check := func(fam string, s *v1alpha1.Subnet, w want, got []netip.Addr) {
			if s == nil {
				return
			}
			if w.orderedSpans && !slices.Equal(got, w.addrs[:n]) {
				t.Fatalf("%s %s: units %v\nwant %v", show(spec), fam, got, w.addrs[:n])
			}
			adm := admissible(s, fam == "ipv4")
			for i, a := range got {
				switch {
				case !w.prefix.Contains(a):
					t.Fatalf("%s %s: %s outside the subnet", show(spec), fam, a)
				case a == w.prefix.Addr():
					t.Fatalf("%s %s: %s is the network address", show(spec), fam, a)
				case a.Is4() && a == LastAddr(w.prefix):
					t.Fatalf("%s %s: %s is the broadcast address", show(spec), fam, a)
				case a == w.gateway || adm && w.gateway.IsValid() && a == w.gateway.WithZone(""):
					t.Fatalf("%s %s: %s is the gateway", show(spec), fam, a)
				case slices.ContainsFunc(w.excluded, func(p netip.Prefix) bool { return p.Contains(a) }):
					t.Fatalf("%s %s: %s is excluded", show(spec), fam, a)
				case !slices.ContainsFunc(w.spans, func(sp [2]netip.Addr) bool { return !a.Less(sp[0]) && !sp[1].Less(a) }):
					t.Fatalf("%s %s: %s outside every range", show(spec), fam, a)
				case adm && a.Is4() != (fam == "ipv4"):
					t.Fatalf("%s %s: %s of the wrong family", show(spec), fam, a)
				case w.disjointSpans && i > 0 && !got[i-1].Less(a):
					t.Fatalf("%s %s: %s after %s: not distinct and ascending", show(spec), fam, a, got[i-1])
				}
			}
		}
		check("ipv4", spec.IPv4, w4, v4)
		check("ipv6", spec.IPv6, w6, v6)

		// The count: per family, exact when Enumerate listed all of it
		// or its arithmetic is exact (countable); otherwise at most the
		// exact count. A dual-stack pool has as many as its smaller family.
		var exact *big.Int
		isExact := true
		for _, x := range []struct {
			s *v1alpha1.Subnet
			w want
		}{{spec.IPv4, w4}, {spec.IPv6, w6}} {
			if x.s == nil {
				continue
			}
			c := x.w.exact
			isExact = isExact && (!x.w.truncated || x.w.countable)
			if exact == nil || c.Cmp(exact) < 0 {
				exact = c
			}
		}
		sat := int64(math.MaxInt64)
		if exact.IsInt64() {
			sat = exact.Int64()
		}
		switch {
		case pu.Total < int64(len(pu.Units)):
			t.Fatalf("%s: total %d below the %d units listed", show(spec), pu.Total, len(pu.Units))
		case isExact && pu.Total != sat:
			t.Fatalf("%s: total %d, want %d", show(spec), pu.Total, sat)
		case !isExact && pu.Total > sat:
			t.Fatalf("%s: total %d, more than the %d there are", show(spec), pu.Total, sat)
		}
	})
}

func show(spec v1alpha1.IPPoolSpec) string {
	var b strings.Builder
	for _, x := range []struct {
		name string
		s    *v1alpha1.Subnet
	}{{"ipv4", spec.IPv4}, {"ipv6", spec.IPv6}} {
		if x.s != nil {
			b.WriteString(x.name + "{cidr " + x.s.CIDR + " gw " + x.s.Gateway)
			for _, r := range x.s.Ranges {
				b.WriteString(" range " + r.Start + "-" + r.End)
			}
			for _, e := range x.s.Exclude {
				b.WriteString(" exclude " + e)
			}
			b.WriteString("} ")
		}
	}
	return b.String()
}
