package metrics

import (
	"context"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	clientmetrics "k8s.io/client-go/tools/metrics"
)

// kubeRequests counts every request this process's client-go clients send.
// client-go reports them through one process-wide hook, so the counter is
// process-wide too; each component registers it in its own registry.
var kubeRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "warmpool_kube_requests_total",
	Help: "Kubernetes API requests this process sent, by HTTP method and response code (writes are POST, PUT, PATCH and DELETE).",
}, []string{"method", "code"})

var hookOnce sync.Once

// KubeRequests returns the counter of this process's Kubernetes API
// requests, hooking it into client-go on first use. The benchmark reads
// it to count the API writes warmpool adds per pod; an operator reads it
// for the load warmpool puts on the apiserver.
func KubeRequests() prometheus.Collector {
	hookOnce.Do(func() {
		clientmetrics.Register(clientmetrics.RegisterOpts{RequestResult: requestResult{}})
	})
	return kubeRequests
}

type requestResult struct{}

func (requestResult) Increment(_ context.Context, code, method, _ string) {
	kubeRequests.WithLabelValues(method, code).Inc()
}
