package v1alpha1_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/internal/rig/testenv"
	"github.com/warmpool/warmpool/manifests"
)

func v4(cidr string, mod ...func(*v1alpha1.Subnet)) *v1alpha1.Subnet {
	s := &v1alpha1.Subnet{CIDR: cidr}
	for _, m := range mod {
		m(s)
	}
	return s
}

func ranges(pairs ...string) func(*v1alpha1.Subnet) {
	return func(s *v1alpha1.Subnet) {
		for i := 0; i+1 < len(pairs); i += 2 {
			s.Ranges = append(s.Ranges, v1alpha1.IPRange{Start: pairs[i], End: pairs[i+1]})
		}
	}
}

func gateway(gw string) func(*v1alpha1.Subnet) {
	return func(s *v1alpha1.Subnet) { s.Gateway = gw }
}

func pool(name string, spec v1alpha1.IPPoolSpec) *v1alpha1.IPPool {
	return &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}
}

func warm(min, target, max int32) *v1alpha1.Warm {
	return &v1alpha1.Warm{MinWarm: &min, WarmTarget: &target, MaxWarm: &max}
}

// TestPoolValidation applies the CRDs to a real kube-apiserver and checks
// that valid pools of each family are accepted and that each kind of invalid
// pool is rejected with a message naming the offending field.
func TestPoolValidation(t *testing.T) {
	cfg := testenv.APIServerWithCRDs(t)
	cs, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pools := cs.IPPools()

	t.Run("examples", func(t *testing.T) {
		for _, name := range []string{"ipv4", "ipv6", "dual-stack"} {
			p, err := manifests.ExamplePool(name)
			if err != nil {
				t.Fatal(err)
			}
			got, err := pools.Create(ctx, p, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("example %s rejected: %v", name, err)
			}
			if got.Spec.Warm == nil || got.Spec.Warm.MaxWarm == nil {
				t.Errorf("example %s: warm defaults not applied: %+v", name, got.Spec.Warm)
			}
		}
	})

	t.Run("defaults", func(t *testing.T) {
		got, err := pools.Create(ctx, pool("defaults", v1alpha1.IPPoolSpec{IPv4: v4("10.9.0.0/24")}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := v1alpha1.WarmKnobs{MinWarm: v1alpha1.DefaultMinWarm, WarmTarget: v1alpha1.DefaultWarmTarget, MaxWarm: v1alpha1.DefaultMaxWarm}
		if got.Spec.Warm == nil || got.Spec.Warm.MinWarm == nil || got.Spec.Warm.WarmTarget == nil || got.Spec.Warm.MaxWarm == nil {
			t.Fatalf("warm = %+v, want every knob defaulted", got.Spec.Warm)
		}
		if k := got.Spec.Warm.Resolved(); k != want {
			t.Errorf("warm = %+v, want the defaults %+v", k, want)
		}
		// An explicit zero is kept, not defaulted.
		zero, err := pools.Create(ctx, pool("zero-warm", v1alpha1.IPPoolSpec{IPv4: v4("10.9.1.0/24"), Warm: warm(0, 0, 0)}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if k := zero.Spec.Warm.Resolved(); k != (v1alpha1.WarmKnobs{}) {
			t.Errorf("explicit zeros became %+v", k)
		}
	})

	valid := []struct {
		name string
		spec v1alpha1.IPPoolSpec
	}{
		{"v4-range-single-address", v1alpha1.IPPoolSpec{IPv4: v4("10.1.0.0/24", ranges("10.1.0.7", "10.1.0.7"))}},
		{"v4-range-crosses-octet", v1alpha1.IPPoolSpec{IPv4: v4("10.1.0.0/16", ranges("10.1.0.255", "10.1.1.0"))}},
		{"v4-ranges-adjacent", v1alpha1.IPPoolSpec{IPv4: v4("10.1.0.0/24", ranges("10.1.0.10", "10.1.0.20", "10.1.0.21", "10.1.0.30"))}},
		{"v4-ranges-out-of-order", v1alpha1.IPPoolSpec{IPv4: v4("10.1.0.0/24", ranges("10.1.0.100", "10.1.0.200", "10.1.0.10", "10.1.0.20"))}},
		{"v4-whole-space-edges", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/8", ranges("10.0.0.0", "10.255.255.255"))}},
		{"v6-ranges-disjoint", v1alpha1.IPPoolSpec{IPv6: v4("fd00:1::/64", ranges("fd00:1::10", "fd00:1::ff", "fd00:1::1:0", "fd00:1::1:ff"))}},
		{"v6-range-high-bits", v1alpha1.IPPoolSpec{IPv6: v4("fd00:1::/64", ranges("fd00:1::ffff:ffff:ffff:fffe", "fd00:1::ffff:ffff:ffff:ffff"))}},
		{"dual-stack-gateways", v1alpha1.IPPoolSpec{IPv4: v4("10.2.0.0/24", gateway("10.2.0.1")), IPv6: v4("fd00:2::/64", gateway("fd00:2::1"))}},
		{"warm-equal-bounds", v1alpha1.IPPoolSpec{IPv4: v4("10.3.0.0/24"), Warm: warm(8, 0, 8)}},
	}
	for _, tc := range valid {
		t.Run("valid/"+tc.name, func(t *testing.T) {
			if _, err := pools.Create(ctx, pool(tc.name, tc.spec), metav1.CreateOptions{}); err != nil {
				t.Fatalf("rejected a valid pool: %v", err)
			}
		})
	}

	vlan := int32(5000)
	invalid := []struct {
		name string
		spec v1alpha1.IPPoolSpec
		// want are substrings of the apiserver's message: the field path and
		// what is wrong with it.
		want []string
	}{
		{"no-family", v1alpha1.IPPoolSpec{}, []string{"spec", "a pool needs ipv4, ipv6 or both"}},
		{"malformed-cidr", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/33")}, []string{"spec.ipv4.cidr", "is not a CIDR"}},
		{"garbage-cidr", v1alpha1.IPPoolSpec{IPv4: v4("ten.zero/24")}, []string{"spec.ipv4.cidr", "is not a CIDR"}},
		{"cidr-with-host-bits", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.5/24")}, []string{"spec.ipv4.cidr", "has host bits set", "write the network address"}},
		{"family-mismatch-v4", v1alpha1.IPPoolSpec{IPv4: v4("fd00::/64")}, []string{"spec.ipv4.cidr", "must be an IPv4 CIDR"}},
		{"family-mismatch-v6", v1alpha1.IPPoolSpec{IPv6: v4("10.0.0.0/24")}, []string{"spec.ipv6.cidr", "must be an IPv6 CIDR"}},
		{"range-family-mismatch", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", ranges("10.0.0.5", "fd00::5"))}, []string{"spec.ipv4.ranges[0]", "same address family"}},
		{"range-outside-subnet", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", ranges("10.0.1.5", "10.0.1.9"))}, []string{"spec.ipv4.ranges", "every range must lie inside cidr"}},
		{"range-end-outside-subnet", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", ranges("10.0.0.5", "10.0.1.9"))}, []string{"spec.ipv4.ranges", "every range must lie inside cidr"}},
		{"range-v6-outside-subnet", v1alpha1.IPPoolSpec{IPv6: v4("fd00:1::/64", ranges("fd00:2::1", "fd00:2::9"))}, []string{"spec.ipv6.ranges", "every range must lie inside cidr"}},
		{"range-start-after-end", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", ranges("10.0.0.9", "10.0.0.5"))}, []string{"spec.ipv4.ranges[0].start", "range start 10.0.0.9 is greater than its end 10.0.0.5"}},
		{"range-start-after-end-octet", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/16", ranges("10.0.1.0", "10.0.0.255"))}, []string{"spec.ipv4.ranges[0].start", "greater than its end"}},
		{"range-v6-start-after-end", v1alpha1.IPPoolSpec{IPv6: v4("fd00:1::/64", ranges("fd00:1::1:0", "fd00:1::ffff"))}, []string{"spec.ipv6.ranges[0].start", "greater than its end"}},
		{"range-not-an-ip", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", ranges("10.0.0.x", "10.0.0.9"))}, []string{"spec.ipv4.ranges[0].start", "not an address"}},
		{"ranges-overlap", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", ranges("10.0.0.10", "10.0.0.20", "10.0.0.15", "10.0.0.30"))}, []string{"spec.ipv4.ranges", "ranges must not overlap"}},
		{"ranges-contained", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", ranges("10.0.0.10", "10.0.0.90", "10.0.0.20", "10.0.0.30"))}, []string{"spec.ipv4.ranges", "ranges must not overlap"}},
		{"ranges-share-an-address", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", ranges("10.0.0.10", "10.0.0.20", "10.0.0.20", "10.0.0.30"))}, []string{"spec.ipv4.ranges", "ranges must not overlap"}},
		{"ranges-v6-overlap", v1alpha1.IPPoolSpec{IPv6: v4("fd00:1::/64", ranges("fd00:1::10", "fd00:1::ff", "fd00:1::fe", "fd00:1::1:0"))}, []string{"spec.ipv6.ranges", "ranges must not overlap"}},
		{"gateway-outside-subnet", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", gateway("10.0.1.1"))}, []string{"spec.ipv4.gateway", "gateway 10.0.1.1 must lie inside cidr 10.0.0.0/24"}},
		{"gateway-other-family", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", gateway("fd00::1"))}, []string{"spec.ipv4.gateway", "gateway fd00::1 must lie inside cidr 10.0.0.0/24"}},
		{"gateway-not-canonical", v1alpha1.IPPoolSpec{IPv6: v4("fd00:1::/64", gateway("FD00:1::1"))}, []string{"spec.ipv6.gateway", "canonical"}},
		{"exclusion-outside-subnet", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", func(s *v1alpha1.Subnet) { s.Exclude = []string{"10.0.0.7", "10.0.9.0/28"} })}, []string{"spec.ipv4.exclude", "every exclusion must lie inside cidr"}},
		{"gateway-is-network-address", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", gateway("10.0.0.0"))}, []string{"spec.ipv4.gateway", "must not be the subnet's network address"}},
		{"exclusion-host-bits", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", func(s *v1alpha1.Subnet) { s.Exclude = []string{"10.0.0.5/28"} })}, []string{"spec.ipv4.exclude[0]", "exclusion 10.0.0.5/28 is not canonical"}},
		{"exclusion-not-canonical", v1alpha1.IPPoolSpec{IPv6: v4("fd00:1::/64", func(s *v1alpha1.Subnet) { s.Exclude = []string{"FD00:1::7"} })}, []string{"spec.ipv6.exclude[0]", "is not canonical"}},
		{"route-dst-host-bits", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", func(s *v1alpha1.Subnet) { s.Routes = []v1alpha1.Route{{Dst: "10.9.0.5/16"}} })}, []string{"spec.ipv4.routes[0].dst", "has host bits set"}},
		{"route-via-other-family", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", func(s *v1alpha1.Subnet) { s.Routes = []v1alpha1.Route{{Dst: "10.9.0.0/16", Via: "fd00::1"}} })}, []string{"spec.ipv4.routes", "via must be of its dst's address family"}},
		{"route-other-family", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24", func(s *v1alpha1.Subnet) { s.Routes = []v1alpha1.Route{{Dst: "fd00::/8"}} })}, []string{"spec.ipv4.routes", "address family"}},
		{"min-warm-above-max-warm", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24"), Warm: warm(10, 4, 5)}, []string{"spec.warm.minWarm", "minWarm must not exceed maxWarm"}},
		{"negative-warm-target", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24"), Warm: warm(0, -1, 5)}, []string{"spec.warm.warmTarget"}},
		{"vlan-out-of-range", v1alpha1.IPPoolSpec{IPv4: v4("10.0.0.0/24"), VLAN: &vlan}, []string{"spec.vlan"}},
	}
	for _, tc := range invalid {
		t.Run("invalid/"+tc.name, func(t *testing.T) {
			_, err := pools.Create(ctx, pool(tc.name, tc.spec), metav1.CreateOptions{})
			if err == nil {
				t.Fatal("the apiserver accepted an invalid pool")
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("want an Invalid error, got %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message does not contain %q:\n%v", w, err)
				}
			}
			t.Logf("rejected: %v", err)
		})
	}

	t.Run("subnet-immutable", func(t *testing.T) {
		p, err := pools.Get(ctx, "defaults", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for name, mutate := range map[string]func(*v1alpha1.Subnet){
			"cidr":    func(s *v1alpha1.Subnet) { s.CIDR = "10.9.1.0/24" },
			"ranges":  ranges("10.9.0.10", "10.9.0.20"),
			"exclude": func(s *v1alpha1.Subnet) { s.Exclude = []string{"10.9.0.7"} },
			"gateway": gateway("10.9.0.1"),
		} {
			changed := p.DeepCopy()
			mutate(changed.Spec.IPv4)
			_, err = pools.Update(ctx, changed, metav1.UpdateOptions{})
			if err == nil || !strings.Contains(err.Error(), "spec.ipv4") || !strings.Contains(err.Error(), "immutable") {
				t.Fatalf("changing spec.ipv4.%s: got %v, want an immutability error naming spec.ipv4", name, err)
			}
		}
		p.Spec.IPv6 = v4("fd00:9::/64")
		_, err = pools.Update(ctx, p, metav1.UpdateOptions{})
		if err == nil || !strings.Contains(err.Error(), "immutable") {
			t.Fatalf("adding ipv6 to a pool: got %v, want an immutability error", err)
		}
		// The knobs and the routes stay mutable.
		p.Spec.IPv6 = nil
		p.Spec.Warm = warm(2, 4, 16)
		p.Spec.IPv4.Routes = []v1alpha1.Route{{Dst: "172.16.0.0/12"}}
		if _, err := pools.Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("changing warm.maxWarm and the routes: %v", err)
		}
	})
}

// TestNodeLeaseRoundTrip stores a NodeLease of each kind of unit and reads
// it back, and shows that pool and node are immutable.
func TestNodeLeaseRoundTrip(t *testing.T) {
	cfg := testenv.APIServerWithCRDs(t)
	cs, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lease := &v1alpha1.NodeLease{
		ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.NodeLeaseName("underlay-dual", "node-1")},
		Spec: v1alpha1.NodeLeaseSpec{
			Pool: "underlay-dual", Node: "node-1", Epoch: 3,
			Units: []v1alpha1.LeasedUnit{
				{IPv4: "10.20.0.10", IPv6: "fd00:20::10"},
				{IPv4: "10.20.0.11"},
				{IPv6: "fd00:20::12"},
			},
		},
	}
	leases := cs.NodeLeases()
	if _, err := leases.Create(ctx, lease, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := leases.Get(ctx, lease.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Spec.Units, lease.Spec.Units) {
		t.Fatalf("read back %+v, want %+v", got.Spec, lease.Spec)
	}
	got.Spec.Node = "node-2"
	if _, err := leases.Update(ctx, got, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), "immutable") {
		t.Fatalf("moving a lease to another node: got %v, want an immutability error", err)
	}
	for name, tc := range map[string]struct {
		mutate func(*v1alpha1.LeasedUnit)
		want   string
	}{
		"no address":   {func(u *v1alpha1.LeasedUnit) { u.IPv4, u.IPv6 = "", "" }, "a unit needs ipv4, ipv6 or both"},
		"long address": {func(u *v1alpha1.LeasedUnit) { u.IPv6 = strings.Repeat("f", 46) }, "spec.units[0].ipv6"},
	} {
		bad := lease.DeepCopy()
		bad.Name = "bad"
		bad.ResourceVersion = ""
		tc.mutate(&bad.Spec.Units[0])
		if _, err := leases.Create(ctx, bad, metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "spec.units[0]") {
			t.Errorf("%s: got %v, want an error naming spec.units[0] with %q", name, err, tc.want)
		}
	}
}
