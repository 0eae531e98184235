package faults

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// apiMode is what the proxy does to the allocators' writes.
type apiMode int

const (
	apiPass      apiMode = iota
	apiConflicts         // half of the writes answered 409 Conflict without reaching the apiserver
	apiSlow              // writes held before they are sent, or their answer held, or lost after they landed
)

// apiProxy stands between the allocators and kube-apiserver. During a
// fault it answers their NodeLease and IPPool writes with conflicts, or
// delays them, or loses the answer of a write that landed: what a busy
// apiserver, a flaky load balancer or a timed-out client sees.
type apiProxy struct {
	w          *world
	srv        *http.Server
	rp         *httputil.ReverseProxy
	kubeconfig string

	mu   sync.Mutex
	mode apiMode
}

func newAPIProxy(w *world, cfg *rest.Config, dir string) (*apiProxy, error) {
	target, err := url.Parse(cfg.Host)
	if err != nil {
		return nil, err
	}
	tr, err := rest.TransportFor(cfg)
	if err != nil {
		return nil, err
	}
	p := &apiProxy{w: w, rp: &httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport:     tr,
		FlushInterval: -1,                         // watches stream
		ErrorLog:      log.New(io.Discard, "", 0), // the apiserver restarting is the point
	}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(l) }()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["proxy"] = &clientcmdapi.Cluster{Server: "http://" + l.Addr().String()}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts["proxy"] = &clientcmdapi.Context{Cluster: "proxy", AuthInfo: "admin"}
	kc.CurrentContext = "proxy"
	p.kubeconfig = filepath.Join(dir, "allocator.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, p.kubeconfig); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *apiProxy) set(m apiMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = m
}

func (p *apiProxy) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = p.srv.Shutdown(ctx)
	p.srv.Close()
}

// targeted: a write to warmpool's own objects.
func targeted(r *http.Request) bool {
	if r.Method == http.MethodGet {
		return false
	}
	return strings.Contains(r.URL.Path, "/nodeleases") || strings.Contains(r.URL.Path, "/ippools")
}

func (p *apiProxy) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	mode := p.mode
	p.mu.Unlock()
	if mode == apiPass || !targeted(r) {
		p.rp.ServeHTTP(rw, r)
		return
	}
	w := p.w
	switch {
	case mode == apiConflicts && w.intn(2) == 0:
		w.stats.count("api-conflicts-injected")
		name := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		rw.Header().Set("Content-Type", "application/json")
		rw.WriteHeader(http.StatusConflict)
		fmt.Fprintf(rw, `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"Conflict","code":409,`+
			`"message":"Operation cannot be fulfilled on %s: the object has been modified; please apply your changes to the latest version and try again (injected)"}`, name)
	case mode == apiSlow:
		d := w.between(300*time.Millisecond, 3*time.Second)
		switch w.intn(3) {
		case 0:
			w.stats.count("api-writes-delayed")
			time.Sleep(d)
			p.rp.ServeHTTP(rw, r)
		case 1:
			// The write lands; its answer never comes back.
			w.stats.count("api-answers-lost")
			rec := httptest.NewRecorder()
			p.rp.ServeHTTP(rec, r)
			time.Sleep(d)
			panic(http.ErrAbortHandler)
		default:
			w.stats.count("api-answers-delayed")
			rec := httptest.NewRecorder()
			p.rp.ServeHTTP(rec, r)
			time.Sleep(d)
			for k, v := range rec.Header() {
				rw.Header()[k] = v
			}
			rw.WriteHeader(rec.Code)
			_, _ = io.Copy(rw, rec.Body)
		}
	default:
		p.rp.ServeHTTP(rw, r)
	}
}
