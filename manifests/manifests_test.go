package manifests

import (
	"context"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
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
