package allocator

import (
	"fmt"
	"math"
	"testing"

	"github.com/warmpool/warmpool/api/v1alpha1"
)

func TestEnumerate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spec  v1alpha1.IPPoolSpec
		units string // fmt of the first units, as "v4/v6 ..."
		n     int
		total int64
	}{
		{
			// The doc comment's worked example.
			name: "dual-stack doc example",
			spec: v1alpha1.IPPoolSpec{
				IPv4: &v1alpha1.Subnet{CIDR: "10.0.0.0/29", Gateway: "10.0.0.1", Exclude: []string{"10.0.0.4"}},
				IPv6: &v1alpha1.Subnet{CIDR: "fd00::/125"},
			},
			units: "10.0.0.2/fd00::1 10.0.0.3/fd00::2 10.0.0.5/fd00::3 10.0.0.6/fd00::4",
			n:     4, total: 4,
		},
		{
			name: "ipv4 ranges out of order, exclusion CIDR",
			spec: v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: "10.1.0.0/24",
				Ranges:  []v1alpha1.IPRange{{Start: "10.1.0.100", End: "10.1.0.101"}, {Start: "10.1.0.10", End: "10.1.0.20"}},
				Exclude: []string{"10.1.0.16/30"}}},
			units: "10.1.0.10/ 10.1.0.11/ 10.1.0.12/ 10.1.0.13/ 10.1.0.14/ 10.1.0.15/ 10.1.0.20/ 10.1.0.100/ 10.1.0.101/",
			n:     9, total: 9,
		},
		{
			name:  "ipv4 /31 has no usable address besides network and broadcast",
			spec:  v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: "10.2.0.0/31"}},
			units: "", n: 0, total: 0,
		},
		{
			name:  "ipv6 keeps the last address (no broadcast)",
			spec:  v1alpha1.IPPoolSpec{IPv6: &v1alpha1.Subnet{CIDR: "fd00:1::/126", Gateway: "fd00:1::1"}},
			units: "/fd00:1::2 /fd00:1::3", n: 2, total: 2,
		},
		{
			name:  "dual-stack limited by the smaller family",
			spec:  v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: "10.3.0.0/30"}, IPv6: &v1alpha1.Subnet{CIDR: "fd00:3::/64"}},
			units: "10.3.0.1/fd00:3::1 10.3.0.2/fd00:3::2", n: 2, total: 2,
		},
		{
			name: "ipv6 /64 is capped when listed, saturated when counted",
			spec: v1alpha1.IPPoolSpec{IPv6: &v1alpha1.Subnet{CIDR: "fd00:4::/64"}},
			n:    MaxUnitsPerPool, total: math.MaxInt64,
		},
		{
			name: "big ipv6 range counted exactly",
			spec: v1alpha1.IPPoolSpec{IPv6: &v1alpha1.Subnet{CIDR: "fd00:5::/64",
				Ranges: []v1alpha1.IPRange{{Start: "fd00:5::", End: "fd00:5::1:ffff"}}, Gateway: "fd00:5::1", Exclude: []string{"fd00:5::100/120"}}},
			// 131072 in the range, minus the network address and the
			// gateway, minus 256 excluded.
			n: MaxUnitsPerPool, total: 131072 - 2 - 256,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pu, err := Enumerate(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if len(pu.Units) != tc.n || pu.Total != tc.total {
				t.Fatalf("%d units, total %d; want %d, %d", len(pu.Units), pu.Total, tc.n, tc.total)
			}
			if tc.units != "" {
				var got string
				for i, u := range pu.Units {
					if i > 0 {
						got += " "
					}
					v4, v6 := "", ""
					if u.IPv4.IsValid() {
						v4 = u.IPv4.String()
					}
					if u.IPv6.IsValid() {
						v6 = u.IPv6.String()
					}
					got += fmt.Sprintf("%s/%s", v4, v6)
				}
				if got != tc.units {
					t.Fatalf("units %s\nwant  %s", got, tc.units)
				}
			}
		})
	}
}
