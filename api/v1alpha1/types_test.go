package v1alpha1

import (
	"regexp"
	"strings"
	"testing"
)

func TestWarmResolved(t *testing.T) {
	i := func(v int32) *int32 { return &v }
	defaults := WarmKnobs{DefaultMinWarm, DefaultWarmTarget, DefaultMaxWarm}
	for _, tc := range []struct {
		name string
		warm *Warm
		want WarmKnobs
	}{
		{"nil", nil, defaults},
		{"empty", &Warm{}, defaults},
		{"explicit zeros kept", &Warm{MinWarm: i(0), WarmTarget: i(0), MaxWarm: i(0)}, WarmKnobs{}},
		{"partial", &Warm{MaxWarm: i(16)}, WarmKnobs{DefaultMinWarm, DefaultWarmTarget, 16}},
		{"all set", &Warm{MinWarm: i(1), WarmTarget: i(8), MaxWarm: i(32)}, WarmKnobs{1, 8, 32}},
	} {
		if got := tc.warm.Resolved(); got != tc.want {
			t.Errorf("%s: Resolved() = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestNodeLeaseName(t *testing.T) {
	dnsSubdomain := regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	long := strings.Repeat("n", 240) + ".example.com"
	names := map[string]bool{}
	for _, pn := range [][2]string{
		{"a.b", "c"}, {"a", "b.c"}, // the same "<pool>.<node>" prefix
		{"underlay-dual", "node-1"},
		{"underlay-dual", long},
		{strings.Repeat("p", 250) + "-", "node-1"}, // a cut that would end in a dash
	} {
		name := NodeLeaseName(pn[0], pn[1])
		if len(name) > 253 || !dnsSubdomain.MatchString(name) {
			t.Errorf("NodeLeaseName(%q, %q) = %q: not a DNS subdomain of at most 253 characters", pn[0], pn[1], name)
		}
		if names[name] {
			t.Errorf("NodeLeaseName(%q, %q) = %q collides", pn[0], pn[1], name)
		}
		names[name] = true
		if NodeLeaseName(pn[0], pn[1]) != name {
			t.Errorf("NodeLeaseName(%q, %q) is not stable", pn[0], pn[1])
		}
	}
	if got := NodeLeaseName("underlay-dual", "node-1"); !strings.HasPrefix(got, "underlay-dual.node-1-") {
		t.Errorf("NodeLeaseName lost its readable prefix: %q", got)
	}
}
