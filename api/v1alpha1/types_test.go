package v1alpha1

import "testing"

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
