// Package controlplane runs a real, local Kubernetes control plane: etcd,
// kube-apiserver and, on request, kube-controller-manager and kube-scheduler,
// as child processes on loopback with free ports, self-signed certificates, a
// service-account key and a token kubeconfig. It is the one way tests and the
// perf harness get a cluster; it owns the processes and their working
// directory and removes both on Stop.
package controlplane

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/warmpool/warmpool/internal/rig/child"
	"github.com/warmpool/warmpool/internal/rig/toolchain"
)

// Options configure a control plane. The zero value starts etcd and
// kube-apiserver from the binary cache in a temporary directory.
type Options struct {
	// EtcdBinary and KubeBinary default to the binaries in the cache
	// (internal/rig/toolchain). KubeBinary is the combined binary whose first
	// argument names the component.
	EtcdBinary string
	KubeBinary string

	// Dir holds certificates, etcd's data and the component logs. Empty means
	// a new temporary directory, removed by Stop; a given Dir is kept.
	Dir string

	// ControllerManager and Scheduler start those components too, which
	// tests need for Deployments to turn into bound pods.
	ControllerManager bool
	Scheduler         bool

	// ClientQPS and ClientBurst set the controller-manager's and the
	// scheduler's API client limits. Zero keeps the upstream defaults
	// (controller-manager 20/30, scheduler 50/100), which make the ReplicaSet
	// controller, not the IPAM, the bottleneck of a 1000-pod burst.
	ClientQPS   int
	ClientBurst int

	// Extra flags appended to each component's command line.
	EtcdArgs, APIServerArgs, ControllerManagerArgs, SchedulerArgs []string

	// ReadyTimeout bounds the wait for all components; default 90 s.
	ReadyTimeout time.Duration

	// Address is where kube-apiserver listens and what it advertises;
	// default 127.0.0.1. Real nodes' pods reach it through the kubernetes
	// Service, which needs an address that is not loopback.
	Address string
	// RealNodes sets the cluster up for real kubelets: the Node
	// authorizer and NodeRestriction beside RBAC, ServiceAccount admission
	// (pods get tokens), the kubernetes Service's endpoints reconciled, a
	// kubelet dialled at its InternalIP (never by a name the machine's
	// resolver would look up), and the root CA published to every
	// namespace. It needs the controller-manager.
	RealNodes bool
	// Users are token users besides the admin (a kubelet's
	// system:node:<name>, kube-proxy's, CoreDNS's), each with its groups;
	// Kubeconfig(user) writes one for a user.
	Users map[string][]string
}

// ControlPlane is a running control plane. Its methods are safe for
// concurrent use.
type ControlPlane struct {
	dir     string
	ownDir  bool
	token   string
	caFile  string
	server  string
	kubecfg string
	etcdURL string

	mu    sync.Mutex
	procs []*child.Process // in start order; stopped in reverse

	tokens map[string]string // user -> token, the admin's and Options.Users'

	// What RestartAPIServer needs to start kube-apiserver again.
	api                      *child.Process
	apiBin, apiLogs          string
	apiArgs                  []string
	apiPort, apiIncarnations int
}

const adminUser = "warmpool-admin"

// Start builds the working directory, starts the components in order and
// waits until each is ready. On error everything started is stopped.
func Start(ctx context.Context, opts Options) (*ControlPlane, error) {
	cp, err := start(ctx, opts)
	if errors.Is(err, errAddrInUse) {
		// A free port was taken between reservation and bind: try once more.
		cp, err = start(ctx, opts)
	}
	return cp, err
}

func start(ctx context.Context, opts Options) (cp *ControlPlane, err error) {
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 90 * time.Second
	}
	if opts.Address == "" {
		opts.Address = "127.0.0.1"
	}
	if opts.RealNodes && !opts.ControllerManager {
		return nil, errors.New("control plane: real nodes need the controller-manager (service-account tokens, the root CA)")
	}
	if opts.EtcdBinary == "" {
		if opts.EtcdBinary, err = toolchain.Binary(toolchain.Etcd, "etcd"); err != nil {
			return nil, err
		}
	}
	if opts.KubeBinary == "" {
		if opts.KubeBinary, err = toolchain.Binary(toolchain.Kube, "kube"); err != nil {
			return nil, err
		}
	}
	cp = &ControlPlane{dir: opts.Dir}
	if cp.dir == "" {
		sweepStaleDirs()
		if cp.dir, err = os.MkdirTemp("", dirPrefix+strconv.Itoa(os.Getpid())+"-"); err != nil {
			return nil, fmt.Errorf("control plane dir: %w", err)
		}
		cp.ownDir = true
	} else if err := os.RemoveAll(filepath.Join(cp.dir, "etcd")); err != nil {
		// A given Dir may hold the data of an earlier (or half-started) run.
		return nil, fmt.Errorf("control plane dir: %w", err)
	}
	defer func() {
		if err != nil {
			cp.Stop()
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, opts.ReadyTimeout)
	defer cancel()

	for _, d := range []string{"certs", "etcd", "logs"} {
		if err := os.MkdirAll(filepath.Join(cp.dir, d), 0o700); err != nil {
			return cp, fmt.Errorf("control plane dir: %w", err)
		}
	}
	saKey, err := cp.writeCredentials(opts.Users)
	if err != nil {
		return cp, err
	}
	ports, err := child.FreePorts(5)
	if err != nil {
		return cp, err
	}
	etcdClient, etcdPeer, apiPort, cmPort, schedPort := ports[0], ports[1], ports[2], ports[3], ports[4]
	logs := filepath.Join(cp.dir, "logs")

	cp.etcdURL = "http://" + hostPort(etcdClient)
	peerURL := "http://" + hostPort(etcdPeer)
	etcd, err := cp.launch("etcd", logs, opts.EtcdBinary, append([]string{
		"--name=default",
		"--data-dir=" + filepath.Join(cp.dir, "etcd"),
		"--listen-client-urls=" + cp.etcdURL,
		"--advertise-client-urls=" + cp.etcdURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=default=" + peerURL,
		"--log-level=warn",
		// A test cluster's data dies with it; fsync only slows every write.
		"--unsafe-no-fsync",
	}, opts.EtcdArgs...)...)
	if err != nil {
		return cp, err
	}
	if err := waitListening(ctx, etcd, etcdClient, HTTPCheck(http.DefaultClient, cp.etcdURL+"/health", "")); err != nil {
		return cp, classify(etcd, err)
	}

	cp.server = "https://" + net.JoinHostPort(opts.Address, strconv.Itoa(apiPort))
	certDir := filepath.Join(cp.dir, "certs")
	apiArgs := []string{
		"kube-apiserver",
		"--etcd-servers=" + cp.etcdURL,
		"--bind-address=" + opts.Address,
		"--advertise-address=" + opts.Address,
		"--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + certDir,
		"--service-account-key-file=" + saKey,
		"--service-account-signing-key-file=" + saKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--token-auth-file=" + filepath.Join(certDir, "tokens.csv"),
		"--service-cluster-ip-range=" + ServiceCIDR,
	}
	if opts.RealNodes {
		apiArgs = append(apiArgs,
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--kubelet-preferred-address-types=InternalIP",
		)
	} else {
		apiArgs = append(apiArgs,
			"--authorization-mode=RBAC",
			// The default reconciler refuses a loopback advertise address.
			"--endpoint-reconciler-type=none",
			// No kubelet mounts service-account tokens here, and without the
			// controller-manager no default ServiceAccount exists to admit pods.
			"--disable-admission-plugins=ServiceAccount",
		)
	}
	cp.apiBin, cp.apiLogs, cp.apiArgs, cp.apiPort = opts.KubeBinary, logs, append(apiArgs, opts.APIServerArgs...), apiPort
	api, err := cp.launch("kube-apiserver", logs, opts.KubeBinary, cp.apiArgs...)
	if err != nil {
		return cp, err
	}
	cp.api = api
	// The serving certificate is self-signed and written at start-up, so the
	// readiness probe cannot verify it yet; the client config below does.
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if err := waitListening(ctx, api, apiPort, HTTPCheck(insecure, cp.server+"/readyz", cp.token)); err != nil {
		return cp, classify(api, err)
	}
	cp.caFile = filepath.Join(certDir, "apiserver.crt")
	if err := cp.writeKubeconfig(); err != nil {
		return cp, err
	}
	// The same probe again, now verifying the server against the CA we hand
	// out: a bad config fails here rather than in the first test.
	cfg := cp.RESTConfig()
	verified, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return cp, fmt.Errorf("client for %s: %w", cp.server, err)
	}
	if err := HTTPCheck(verified, cp.server+"/readyz", "")(ctx); err != nil {
		return cp, fmt.Errorf("kube-apiserver with the generated kubeconfig: %w", err)
	}

	// The controller-manager and the scheduler are API clients of the same
	// shape: a kubeconfig, a loopback health port, no leader election.
	clients := []struct {
		on    bool
		name  string
		port  int
		extra []string
	}{
		{opts.ControllerManager, "kube-controller-manager", cmPort, append(append([]string{
			"--controllers=*",
			"--service-account-private-key-file=" + saKey,
			"--use-service-account-credentials=false",
		}, cp.rootCAArgs(opts)...), opts.ControllerManagerArgs...)},
		{opts.Scheduler, "kube-scheduler", schedPort, opts.SchedulerArgs},
	}
	for _, c := range clients {
		if !c.on {
			continue
		}
		args := []string{
			c.name,
			"--kubeconfig=" + cp.kubecfg,
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(c.port),
			"--leader-elect=false",
		}
		args = append(append(args, qpsArgs(opts)...), c.extra...)
		p, err := cp.launch(c.name, logs, opts.KubeBinary, args...)
		if err != nil {
			return cp, err
		}
		if err := waitListening(ctx, p, c.port, HTTPCheck(insecure, "https://"+hostPort(c.port)+"/healthz", "")); err != nil {
			return cp, classify(p, err)
		}
	}
	return cp, nil
}

// ServiceCIDR is the Services' range; the kubernetes Service is its
// first address.
const ServiceCIDR = "10.96.0.0/16"

// rootCAArgs publishes the serving certificate (self-signed: its own CA)
// as every namespace's kube-root-ca.crt, which pods' service-account
// volumes carry: real nodes' pods verify the apiserver with it.
func (cp *ControlPlane) rootCAArgs(opts Options) []string {
	if !opts.RealNodes {
		return nil
	}
	return []string{"--root-ca-file=" + cp.caFile}
}

func qpsArgs(opts Options) []string {
	var args []string
	if opts.ClientQPS > 0 {
		args = append(args, "--kube-api-qps="+strconv.Itoa(opts.ClientQPS))
	}
	if opts.ClientBurst > 0 {
		args = append(args, "--kube-api-burst="+strconv.Itoa(opts.ClientBurst))
	}
	return args
}

func (cp *ControlPlane) launch(name, logDir, bin string, args ...string) (*child.Process, error) {
	p, err := child.Start(name, logDir, bin, args...)
	if err != nil {
		return nil, err
	}
	cp.mu.Lock()
	cp.procs = append(cp.procs, p)
	cp.mu.Unlock()
	return p, nil
}

// classify marks a readiness failure caused by a port taken after we
// reserved it, which Start retries.
func classify(p *child.Process, err error) error {
	if p.Exited() && strings.Contains(p.Tail(8000), "address already in use") {
		return fmt.Errorf("%w: %w", errAddrInUse, err)
	}
	return err
}

// HTTPCheck is a readiness check: a GET of url (with token as a bearer
// token if not empty) answered 200 OK.
func HTTPCheck(client *http.Client, url, token string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
}

// writeCredentials writes the token file (the admin and users, each
// with their groups) and the service-account signing key, and returns
// the key's path.
func (cp *ControlPlane) writeCredentials(users map[string][]string) (string, error) {
	cp.tokens = map[string]string{}
	var lines strings.Builder
	all := maps.Clone(users)
	if all == nil {
		all = map[string][]string{}
	}
	all[adminUser] = []string{"system:masters"}
	for _, user := range slices.Sorted(maps.Keys(all)) {
		tok := make([]byte, 24)
		if _, err := rand.Read(tok); err != nil {
			return "", fmt.Errorf("token of %s: %w", user, err)
		}
		cp.tokens[user] = hex.EncodeToString(tok)
		fmt.Fprintf(&lines, "%s,%s,%s,\"%s\"\n", cp.tokens[user], user, user, strings.Join(all[user], ","))
	}
	cp.token = cp.tokens[adminUser]
	certDir := filepath.Join(cp.dir, "certs")
	if err := os.WriteFile(filepath.Join(certDir, "tokens.csv"), []byte(lines.String()), 0o600); err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", fmt.Errorf("service-account key: %w", err)
	}
	keyPath := filepath.Join(certDir, "sa.key")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(keyPath, pemBytes, 0o600); err != nil {
		return "", fmt.Errorf("service-account key: %w", err)
	}
	return keyPath, nil
}

func (cp *ControlPlane) writeKubeconfig() error {
	cp.kubecfg = filepath.Join(cp.dir, "kubeconfig")
	return cp.writeKubeconfigOf(adminUser, cp.kubecfg)
}

func (cp *ControlPlane) writeKubeconfigOf(user, path string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["warmpool"] = &clientcmdapi.Cluster{Server: cp.server, CertificateAuthority: cp.caFile}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: cp.tokens[user]}
	cfg.Contexts["warmpool"] = &clientcmdapi.Context{Cluster: "warmpool", AuthInfo: user}
	cfg.CurrentContext = "warmpool"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("kubeconfig of %s: %w", user, err)
	}
	return nil
}

// UserKubeconfig writes a kubeconfig for one of Options.Users at path.
func (cp *ControlPlane) UserKubeconfig(user, path string) error {
	if _, ok := cp.tokens[user]; !ok || user == adminUser {
		return fmt.Errorf("kubeconfig: %q is not one of the control plane's users", user)
	}
	return cp.writeKubeconfigOf(user, path)
}

// CAFile is the PEM file of the CA that signed kube-apiserver's serving
// certificate (the certificate itself: it is self-signed).
func (cp *ControlPlane) CAFile() string { return cp.caFile }

// RESTConfig returns a new client config for the cluster admin
// (system:masters). Callers may modify the copy they get.
func (cp *ControlPlane) RESTConfig() *rest.Config {
	return &rest.Config{
		Host:            cp.server,
		BearerToken:     cp.token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: cp.caFile},
		QPS:             -1, // tests and the harness measure the cluster, not a client limiter
	}
}

// Kubeconfig returns the path of an admin kubeconfig for the cluster, for
// child processes such as the controller-manager or kubectl.
func (cp *ControlPlane) Kubeconfig() string { return cp.kubecfg }

// EtcdURL returns etcd's client URL.
func (cp *ControlPlane) EtcdURL() string { return cp.etcdURL }

// Dir returns the working directory; logs are in Dir()/logs.
func (cp *ControlPlane) Dir() string { return cp.dir }

// RestartAPIServer stops kube-apiserver (SIGTERM, as an upgrade or a
// crash-looping control-plane node would), keeps it down for down, then
// starts it again on its port with the same flags and certificate, and
// waits until it is ready. Clients see refused connections meanwhile.
func (cp *ControlPlane) RestartAPIServer(ctx context.Context, down time.Duration) error {
	cp.mu.Lock()
	old := cp.api
	cp.apiIncarnations++
	name := fmt.Sprintf("kube-apiserver.%d", cp.apiIncarnations+1)
	cp.mu.Unlock()
	if old == nil {
		return errors.New("restart kube-apiserver: the control plane has none")
	}
	old.Stop(15 * time.Second)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(down):
	}
	p, err := child.Start(name, cp.apiLogs, cp.apiBin, cp.apiArgs...)
	if err != nil {
		return err
	}
	cp.mu.Lock()
	for i := range cp.procs {
		if cp.procs[i] == old {
			cp.procs[i] = p // keeps the stop order
		}
	}
	cp.api = p
	cp.mu.Unlock()
	client, err := rest.HTTPClientFor(cp.RESTConfig())
	if err != nil {
		return err
	}
	if err := waitListening(ctx, p, cp.apiPort, HTTPCheck(client, cp.server+"/readyz", "")); err != nil {
		return fmt.Errorf("restart kube-apiserver: %w", err)
	}
	return nil
}

// PIDs returns the process ids of the running components, by name.
func (cp *ControlPlane) PIDs() map[string]int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	pids := make(map[string]int, len(cp.procs))
	for _, p := range cp.procs {
		if !p.Exited() {
			pids[p.Name] = p.PID()
		}
	}
	return pids
}

// LogTails returns the end of every component's log, for a failed test to
// print.
func (cp *ControlPlane) LogTails(n int) string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var b strings.Builder
	for _, p := range cp.procs {
		fmt.Fprintf(&b, "==> %s (%s) <==\n%s\n", p.Name, p.LogPath, p.Tail(n))
	}
	return b.String()
}

// dirPrefix starts the name of every temporary directory Start creates;
// the creator's pid follows, so sweepStaleDirs can find those of processes
// that were killed before their cleanup ran.
const dirPrefix = "warmpool-cp-"

// sweepStaleDirs removes the temporary directories of control planes whose
// process no longer exists (a test binary killed by -timeout, say): etcd
// preallocates 64 MB of WAL in each.
func sweepStaleDirs() {
	entries, err := os.ReadDir(os.TempDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), dirPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		digits, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(digits)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
		}
	}
}

// Stop stops the components in reverse start order (clients, then the
// apiserver, then etcd: stopping etcd first hangs the apiserver's shutdown)
// and removes the working directory if Start created it. It is idempotent.
func (cp *ControlPlane) Stop() {
	cp.mu.Lock()
	procs := cp.procs
	cp.procs = nil
	cp.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop(15 * time.Second)
	}
	if cp.ownDir && cp.dir != "" {
		os.RemoveAll(cp.dir)
	}
}
