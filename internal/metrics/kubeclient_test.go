package metrics

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/warmpool/warmpool/internal/rig/metricsdoc"
)

// TestKubeRequestsCountsClientGo: requests a client-go clientset sends
// are counted by method and code once KubeRequests was called.
func TestKubeRequestsCountsClientGo(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(KubeRequests())
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusConflict)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"AlreadyExists","code":409}`))
			return
		}
		_, _ = w.Write([]byte(`{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"x","namespace":"default"}}`))
	}))
	defer srv.Close()
	kube := kubernetes.NewForConfigOrDie(&rest.Config{Host: srv.URL, QPS: -1})
	ctx := context.Background()
	before := testutil.ToFloat64(kubeRequests.WithLabelValues("GET", "200"))
	beforePost := testutil.ToFloat64(kubeRequests.WithLabelValues("POST", "409"))
	for range 3 {
		if _, err := kube.CoreV1().ConfigMaps("default").Get(ctx, "x", metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kube.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{}); err == nil {
		t.Fatal("create: want a conflict")
	}
	if got := testutil.ToFloat64(kubeRequests.WithLabelValues("GET", "200")) - before; got != 3 {
		t.Errorf("GET 200 counted %v times, want 3", got)
	}
	if got := testutil.ToFloat64(kubeRequests.WithLabelValues("POST", "409")) - beforePost; got != 1 {
		t.Errorf("POST 409 counted %v times, want 1", got)
	}
	if n, err := testutil.GatherAndCount(reg, "warmpool_kube_requests_total"); err != nil || n < 2 {
		t.Errorf("registry holds %d series (%v), want the GET and the POST", n, err)
	}
}

// TestKubeRequestsIsDocumented: docs/metrics.md's table of what both
// components export lists exactly the client-go counter both register.
func TestKubeRequestsIsDocumented(t *testing.T) {
	doc, err := metricsdoc.ReadDoc()
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(KubeRequests())
	got, err := metricsdoc.Registered(reg, kubeRequests)
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range metricsdoc.Compare(doc, []string{metricsdoc.SectionBoth}, got) {
		t.Error(err)
	}
}
