package manifests

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"

	"github.com/warmpool/warmpool/api/v1alpha1"
)

// TestCRDsPassServerValidation runs the apiserver's own CRD validation,
// including the static cost estimate of every CEL rule, without a cluster:
// a rule too expensive to install fails here in a second.
func TestCRDsPassServerValidation(t *testing.T) {
	crds, err := CRDs()
	if err != nil {
		t.Fatal(err)
	}
	if len(crds) != 2 {
		t.Fatalf("got %d CRDs, want IPPool and NodeLease", len(crds))
	}
	for _, crd := range crds {
		internal := &apiextensions.CustomResourceDefinition{}
		if err := apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(crd, internal, nil); err != nil {
			t.Fatalf("%s: %v", crd.Name, err)
		}
		// What the apiserver records after the first create; validation
		// insists on it.
		internal.Status.StoredVersions = []string{crd.Spec.Versions[0].Name}
		for _, e := range validation.ValidateCustomResourceDefinition(context.Background(), internal) {
			t.Errorf("%s: %v", crd.Name, e)
		}
	}
}

func TestExamplesDecode(t *testing.T) {
	for _, name := range []string{"ipv4", "ipv6", "dual-stack"} {
		p, err := ExamplePool(name)
		if err != nil {
			t.Fatal(err)
		}
		if p.Spec.IPv4 == nil && p.Spec.IPv6 == nil {
			t.Errorf("example %s has no subnet", name)
		}
	}
}

// TestWarmDefaultsMatchGo keeps the CRD's defaults and the Go defaults that
// Warm.Resolved applies to objects built in code the same.
func TestWarmDefaultsMatchGo(t *testing.T) {
	crds, err := CRDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, crd := range crds {
		if crd.Spec.Names.Kind != "IPPool" {
			continue
		}
		warm := crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"].Properties["warm"]
		for field, want := range map[string]int32{
			"minWarm":    v1alpha1.DefaultMinWarm,
			"warmTarget": v1alpha1.DefaultWarmTarget,
			"maxWarm":    v1alpha1.DefaultMaxWarm,
		} {
			d := warm.Properties[field].Default
			if d == nil || string(d.Raw) != fmt.Sprint(want) {
				t.Errorf("CRD default of warm.%s = %v, Go default %d", field, d, want)
			}
			var whole map[string]int32
			if err := json.Unmarshal(warm.Default.Raw, &whole); err != nil {
				t.Fatalf("warm default: %v", err)
			}
			if whole[field] != want {
				t.Errorf("CRD default of warm = %s, want %s: %d", warm.Default.Raw, field, want)
			}
		}
		return
	}
	t.Fatal("no IPPool CRD")
}
