package client

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// The daemons' clients ask for no gzip, for Kubernetes' types and
// warmpool's alike. The server is TLS, as an apiserver is: over plain
// HTTP client-go uses Go's default transport, which ignores the setting.
func TestClientsAskForNoCompression(t *testing.T) {
	var mu sync.Mutex
	encodings := map[string]string{} // path -> Accept-Encoding
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		encodings[r.URL.Path] = r.Header.Get("Accept-Encoding")
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/api/v1/pods":
			_, _ = w.Write([]byte(`{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[]}`))
		default:
			_, _ = w.Write([]byte(`{"kind":"IPPoolList","apiVersion":"warmpool.io/v1alpha1","metadata":{},"items":[]}`))
		}
	}))
	defer srv.Close()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: srv.URL, CertificateAuthorityData: ca}
	kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "t"}
	kc.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "c"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	kube, wp, err := Clients(path, 10, 10)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := wp.IPPools().List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range []string{"/api/v1/pods", "/apis/warmpool.io/v1alpha1/ippools"} {
		enc, asked := encodings[p]
		if !asked {
			t.Fatalf("no request to %s; got %v", p, encodings)
		}
		if enc != "" {
			t.Errorf("%s asked with Accept-Encoding %q; want none (no gzip between the daemons and the apiserver)", p, enc)
		}
	}
}
