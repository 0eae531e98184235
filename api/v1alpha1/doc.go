// Package v1alpha1 holds warmpool's Kubernetes API: the IPPool, which an
// operator writes to describe an address pool, and the NodeLease, in which the
// allocator persists which node holds which addresses of a pool.
//
// The CRD manifests in manifests/crds and zz_generated.deepcopy.go are
// generated from these types by `make generate`; edit the types, never the
// generated files. docs/api.md documents every field.
//
// +kubebuilder:object:generate=true
// +groupName=warmpool.io
package v1alpha1
