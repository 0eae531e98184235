package manifests_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/warmpool/warmpool/internal/rig/controlplane"
	"github.com/warmpool/warmpool/internal/rig/testenv"
	"github.com/warmpool/warmpool/manifests"
)

// TestRBACIsLeastPrivilege installs rbac/ on a real apiserver (RBAC on)
// and asks it, by SubjectAccessReview, what each service account may do:
// what the components need is allowed, and the writes that matter are
// not (no one but the allocator writes NodeLeases; the agent writes
// nothing; the allocator touches no pod and no other Lease; the
// operator's CLI reads only).
func TestRBACIsLeastPrivilege(t *testing.T) {
	cp := testenv.ControlPlane(t, controlplane.Options{})
	kube := kubernetes.NewForConfigOrDie(cp.RESTConfig())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := manifests.InstallRBAC(ctx, kube); err != nil {
		t.Fatal(err)
	}
	type check struct {
		verb, group, resource, sub, ns, name string
		allowed                              bool
	}
	agent, allocator := "warmpool-agent", "warmpool-allocator"
	cases := map[string][]check{
		agent: {
			{"list", "", "pods", "", "", "", true},
			{"watch", "", "pods", "", "", "", true},
			{"get", "", "pods", "", "default", "web-0", true},
			{"get", "", "nodes", "", "", "node-1", true},
			{"list", "", "namespaces", "", "", "", true},
			{"list", "warmpool.io", "ippools", "", "", "", true},
			{"watch", "warmpool.io", "ippools", "", "", "", true},
			{"create", "warmpool.io", "nodeleases", "", "", "", false},
			{"update", "warmpool.io", "nodeleases", "", "", "x", false},
			{"list", "warmpool.io", "nodeleases", "", "", "", false},
			{"update", "warmpool.io", "ippools", "status", "", "x", false},
			{"update", "", "pods", "", "default", "web-0", false},
			{"patch", "", "nodes", "status", "", "node-1", false},
			{"get", "", "secrets", "", "kube-system", "x", false},
			{"create", "authentication.k8s.io", "tokenreviews", "", "", "", false},
		},
		allocator: {
			{"create", "warmpool.io", "nodeleases", "", "", "", true},
			{"update", "warmpool.io", "nodeleases", "", "", "faults.node-1", true},
			{"list", "warmpool.io", "nodeleases", "", "", "", true},
			{"update", "warmpool.io", "ippools", "status", "", "dual", true},
			{"get", "", "pods", "", "default", "web-0", true},
			{"watch", "", "nodes", "", "", "", true},
			{"create", "authentication.k8s.io", "tokenreviews", "", "", "", true},
			{"create", "coordination.k8s.io", "leases", "", "kube-system", "", true},
			{"update", "coordination.k8s.io", "leases", "", "kube-system", "warmpool-allocator", true},
			{"update", "coordination.k8s.io", "leases", "", "kube-system", "kube-scheduler", false},
			{"update", "coordination.k8s.io", "leases", "", "kube-node-lease", "node-1", false},
			{"delete", "warmpool.io", "nodeleases", "", "", "x", false},
			{"update", "warmpool.io", "ippools", "", "", "dual", false},
			{"create", "warmpool.io", "ippools", "", "", "", false},
			{"update", "", "pods", "", "default", "web-0", false},
			{"delete", "", "pods", "", "default", "web-0", false},
			{"update", "", "nodes", "", "", "node-1", false},
			{"get", "", "secrets", "", "kube-system", "x", false},
		},
	}
	// The operator CLI (kubectl-warmpool, rbac/operator.yaml): reads what
	// its commands read, writes nothing, and reaches no pod but through
	// the proxy in warmpool's namespace.
	operator := "warmpool-operator"
	cases[operator] = []check{
		{"list", "warmpool.io", "ippools", "", "", "", true},
		{"get", "warmpool.io", "ippools", "", "", "dual", true},
		{"list", "warmpool.io", "nodeleases", "", "", "", true},
		{"list", "", "nodes", "", "", "", true},
		{"list", "", "pods", "", "", "", true},
		{"list", "", "pods", "", "kube-system", "", true},
		{"get", "coordination.k8s.io", "leases", "", "kube-system", "warmpool-allocator", true},
		{"get", "", "pods", "proxy", "kube-system", "warmpool-agent-x7k2p", true},
		{"create", "warmpool.io", "ippools", "", "", "", false},
		{"update", "warmpool.io", "ippools", "", "", "dual", false},
		{"update", "warmpool.io", "ippools", "status", "", "dual", false},
		{"delete", "warmpool.io", "ippools", "", "", "dual", false},
		{"create", "warmpool.io", "nodeleases", "", "", "", false},
		{"update", "warmpool.io", "nodeleases", "", "", "x", false},
		{"patch", "warmpool.io", "nodeleases", "", "", "x", false},
		{"delete", "warmpool.io", "nodeleases", "", "", "x", false},
		{"watch", "warmpool.io", "nodeleases", "", "", "", false},
		{"delete", "", "pods", "", "default", "web-0", false},
		{"update", "", "pods", "status", "default", "web-0", false},
		{"patch", "", "nodes", "", "", "node-1", false},
		{"get", "", "nodes", "proxy", "", "node-1", false},
		{"create", "", "pods", "exec", "kube-system", "warmpool-agent-x7k2p", false},
		{"create", "", "pods", "proxy", "kube-system", "warmpool-agent-x7k2p", false},
		{"get", "", "pods", "proxy", "default", "web-0", false},
		{"get", "", "pods", "log", "kube-system", "warmpool-agent-x7k2p", false},
		{"update", "coordination.k8s.io", "leases", "", "kube-system", "warmpool-allocator", false},
		{"get", "coordination.k8s.io", "leases", "", "kube-system", "kube-scheduler", false},
		{"get", "", "secrets", "", "kube-system", "x", false},
	}
	for sa, checks := range cases {
		user, groups := fmt.Sprintf("system:serviceaccount:kube-system:%s", sa), []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"}
		if sa == operator {
			user, groups = "alice", []string{"warmpool-operators", "system:authenticated"}
		}
		for _, c := range checks {
			sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User: user, Groups: groups,
				ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: c.verb, Group: c.group, Resource: c.resource,
					Subresource: c.sub, Namespace: c.ns, Name: c.name},
			}}
			out, err := kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if out.Status.Allowed != c.allowed {
				t.Errorf("%s %s %s.%s/%s %s/%s: allowed %v, want %v (%s)", sa, c.verb, c.resource, c.group, c.sub, c.ns, c.name,
					out.Status.Allowed, c.allowed, out.Status.Reason)
			}
		}
	}
}
