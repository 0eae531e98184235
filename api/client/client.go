// Package client is the typed Kubernetes client for warmpool's API group:
// IPPools (Create/Get/List/Watch/Update/UpdateStatus/Patch/Delete) and
// NodeLeases (the same but UpdateStatus: a NodeLease has no status
// subresource), built on client-go's generic typed client (the code
// client-gen would generate, without the generated files).
package client

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/gentype"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/warmpool/warmpool/api/v1alpha1"
)

// Scheme knows warmpool's types; use it for decoding warmpool objects.
var Scheme = runtime.NewScheme()

var parameterCodec = runtime.NewParameterCodec(Scheme)

func init() {
	if err := v1alpha1.AddToScheme(Scheme); err != nil {
		panic(err) // a broken scheme is a programming error, found by any test
	}
}

// IPPools is the client for IPPool objects.
type IPPools = gentype.ClientWithList[*v1alpha1.IPPool, *v1alpha1.IPPoolList]

// NodeLeases is the client for NodeLease objects.
type NodeLeases = gentype.ClientWithList[*v1alpha1.NodeLease, *v1alpha1.NodeLeaseList]

// Clientset holds the clients of warmpool's resources.
type Clientset struct {
	rest rest.Interface
}

// New returns a clientset for cfg. It copies cfg; the caller's is unchanged.
func New(cfg *rest.Config) (*Clientset, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &v1alpha1.SchemeGroupVersion
	c.APIPath = "/apis"
	c.NegotiatedSerializer = serializer.NewCodecFactory(Scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("warmpool client: %w", err)
	}
	return &Clientset{rest: rc}, nil
}

// IPPools returns the IPPool client.
func (c *Clientset) IPPools() *IPPools {
	return gentype.NewClientWithList[*v1alpha1.IPPool, *v1alpha1.IPPoolList](
		"ippools", c.rest, parameterCodec, "",
		func() *v1alpha1.IPPool { return &v1alpha1.IPPool{} },
		func() *v1alpha1.IPPoolList { return &v1alpha1.IPPoolList{} },
	)
}

// NodeLeases returns the NodeLease client.
func (c *Clientset) NodeLeases() *NodeLeases {
	return gentype.NewClientWithList[*v1alpha1.NodeLease, *v1alpha1.NodeLeaseList](
		"nodeleases", c.rest, parameterCodec, "",
		func() *v1alpha1.NodeLease { return &v1alpha1.NodeLease{} },
		func() *v1alpha1.NodeLeaseList { return &v1alpha1.NodeLeaseList{} },
	)
}

// Clients returns the Kubernetes and warmpool clients for a kubeconfig
// file, or for the in-cluster config when path is empty: what warmpool's
// daemons start with. qps and burst set client-go's rate limiter
// (its default, 5 per second, would throttle the allocator's lease writes
// in a burst).
func Clients(path string, qps float32, burst int) (kubernetes.Interface, *Clientset, error) {
	var cfg *rest.Config
	var err error
	if path == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.QPS, cfg.Burst = qps, burst
	// The daemons run in the cluster, next to the apiserver: gzip on their
	// watches (the apiserver compresses large responses, watches included)
	// costs the apiserver a compression per event per watcher, and them a
	// decompression, for bandwidth a cluster's network has.
	cfg.DisableCompression = true
	kube, err := kubernetes.NewForConfig(KubeConfig(cfg))
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	wp, err := New(cfg)
	if err != nil {
		return nil, nil, err
	}
	return kube, wp, nil
}

// KubeConfig is cfg (copied) for Kubernetes' own types, in protobuf as
// the control plane's components speak it: the agents watch their node's
// pods and the allocator every pod, and JSON would cost the apiserver an
// encoding per event per watcher that protobuf makes several times
// cheaper. warmpool's custom resources have no protobuf form: New keeps
// JSON.
func KubeConfig(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.ContentType = runtime.ContentTypeProtobuf
	c.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	return c
}

// PoolInformer returns an informer on every IPPool; the caller runs it.
func (c *Clientset) PoolInformer() cache.SharedIndexInformer {
	return cache.NewSharedIndexInformer(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return c.IPPools().List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return c.IPPools().Watch(ctx, o)
		},
	}, &v1alpha1.IPPool{}, 0, cache.Indexers{})
}
