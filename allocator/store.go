package allocator

import (
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warmpool/warmpool/api/v1alpha1"
)

// Leases is what the allocator reads and writes of NodeLeases: the API
// client's (client.Clientset.NodeLeases), or an in-memory store in unit
// tests. Writes carry the resourceVersion they were computed from; a
// store refuses a stale one with a Conflict, as the apiserver does.
type Leases interface {
	List(ctx context.Context, opts metav1.ListOptions) (*v1alpha1.NodeLeaseList, error)
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*v1alpha1.NodeLease, error)
	Create(ctx context.Context, nl *v1alpha1.NodeLease, opts metav1.CreateOptions) (*v1alpha1.NodeLease, error)
	Update(ctx context.Context, nl *v1alpha1.NodeLease, opts metav1.UpdateOptions) (*v1alpha1.NodeLease, error)
}

// Pools is what the allocator reads and writes of IPPools: their specs
// (the informer feeds changes) and their status.
type Pools interface {
	List(ctx context.Context, opts metav1.ListOptions) (*v1alpha1.IPPoolList, error)
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*v1alpha1.IPPool, error)
	UpdateStatus(ctx context.Context, p *v1alpha1.IPPool, opts metav1.UpdateOptions) (*v1alpha1.IPPool, error)
}
