package manifests_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/build"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	natsserver "github.com/nats-io/nats-server/v2/server"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/cni"
	"github.com/warmpool/warmpool/cni/install"
	"github.com/warmpool/warmpool/internal/metrics"
	"github.com/warmpool/warmpool/internal/rig/testenv"
	"github.com/warmpool/warmpool/manifests"
	"github.com/warmpool/warmpool/manifests/images"
)

// builds runs kustomize (krusty, in memory, over the embedded tree) on
// every kustomization of deploy/ and returns each one's objects by
// directory. A kustomization that does not build fails the test.
func builds(t *testing.T) map[string][]*unstructured.Unstructured {
	t.Helper()
	mem := filesys.MakeFsInMemory()
	err := fs.WalkDir(manifests.KustomizeFS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(manifests.KustomizeFS(), p)
		if err != nil {
			return err
		}
		return mem.WriteFile("/"+p, b)
	})
	if err != nil {
		t.Fatal(err)
	}
	dirs, err := manifests.Kustomizations()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(dirs, "deploy/base") || !slices.Contains(dirs, "deploy/overlays/nats-cluster") {
		t.Fatalf("kustomizations %v: want deploy/base and deploy/overlays/nats-cluster", dirs)
	}
	out := map[string][]*unstructured.Unstructured{}
	for _, dir := range dirs {
		res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(mem, "/"+dir)
		if err != nil {
			t.Fatalf("kustomize build %s: %v", dir, err)
		}
		for _, r := range res.Resources() {
			m, err := r.Map()
			if err != nil {
				t.Fatalf("%s: %v", dir, err)
			}
			out[dir] = append(out[dir], &unstructured.Unstructured{Object: m})
		}
	}
	return out
}

// decodeFile returns the objects of a multi-document YAML file.
func decodeFile(t *testing.T, file string) []*unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var objs []*unstructured.Unstructured
	docs := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	for {
		doc, err := docs.Read()
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

func convert[T any](t *testing.T, u *unstructured.Unstructured) *T {
	t.Helper()
	if u == nil {
		t.Fatalf("no %T in the build", new(T))
	}
	out := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, out, true); err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
	return out
}

// TestKustomizationsListEveryFile: crds/ and rbac/ are included by their
// Kustomization files, which kustomize needs to name every file: a file
// added to either directory and forgotten there would silently not be
// installed.
func TestKustomizationsListEveryFile(t *testing.T) {
	for _, dir := range []string{"crds", "rbac"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, "Kustomization"))
		if err != nil {
			t.Fatal(err)
		}
		var k struct {
			Resources []string `json:"resources"`
		}
		if err := yaml.Unmarshal(b, &k); err != nil {
			t.Fatalf("%s/Kustomization: %v", dir, err)
		}
		for _, f := range files {
			if !slices.Contains(k.Resources, filepath.Base(f)) {
				t.Errorf("%s is not in %s/Kustomization: the install would leave it out", f, dir)
			}
		}
	}
	base := builds(t)["deploy/base"]
	crds, err := manifests.CRDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, crd := range crds {
		if find(base, "CustomResourceDefinition", crd.Name) == nil {
			t.Errorf("the base does not install CRD %s", crd.Name)
		}
	}
	rbac, err := manifests.RBAC()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range rbac {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{Object: m}
		if find(base, u.GetKind(), u.GetName()) == nil {
			t.Errorf("the base does not install %s %s", u.GetKind(), u.GetName())
		}
	}
}

// TestDeployDryRunApply sends every object of every build, and of every
// example, to a real apiserver as a server-side apply with dry run: each
// must pass the API's validation, the CRDs' schemas and CEL rules
// included. The NetworkAttachmentDefinition CRD that Multus would install
// comes from testdata/ and is installed for real.
func TestDeployDryRunApply(t *testing.T) {
	objsByDir := builds(t)
	cfg := testenv.APIServerWithCRDs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mapper := newMapper(t, cfg)
	nad := decodeFile(t, "testdata/network-attachment-definitions.crd.yaml")[0]
	if err := apply(ctx, dyn, mapper, nad, false); err != nil {
		t.Fatalf("install the NetworkAttachmentDefinition CRD: %v", err)
	}
	crds := dyn.Resource(apiextensionsv1.SchemeGroupVersion.WithResource("customresourcedefinitions"))
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		u, err := crds.Get(ctx, nad.GetName(), metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		crd := convert[apiextensionsv1.CustomResourceDefinition](t, u)
		for _, c := range crd.Status.Conditions {
			if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("NetworkAttachmentDefinition CRD not established: %v", err)
	}
	mapper.Reset()

	examples, err := filepath.Glob("examples/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range examples {
		objsByDir[f] = decodeFile(t, f)
	}
	if len(objsByDir["examples/multus-macvlan.yaml"]) == 0 {
		t.Fatal("no Multus example")
	}
	for dir, objs := range objsByDir {
		t.Logf("%s: %d objects", dir, len(objs))
		for _, o := range objs {
			if err := apply(ctx, dyn, mapper, o, true); err != nil {
				t.Errorf("%s: %s %s/%s refused: %v", dir, o.GetKind(), o.GetNamespace(), o.GetName(), err)
			}
		}
	}

	// The dry run does validate: a pool its CEL rules refuse is refused.
	bad := decodeFile(t, "examples/ipv4.yaml")[0]
	if err := unstructured.SetNestedField(bad.Object, "192.168.51.1", "spec", "ipv4", "gateway"); err != nil {
		t.Fatal(err)
	}
	if err := apply(ctx, dyn, mapper, bad, true); err == nil {
		t.Error("a pool whose gateway is outside its CIDR passed the dry run")
	}
}

func newMapper(t *testing.T, cfg *rest.Config) *restmapper.DeferredDiscoveryRESTMapper {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
}

// apply is `kubectl apply --server-side --force-conflicts`, with
// --dry-run=server when dryRun.
func apply(ctx context.Context, dyn dynamic.Interface, mapper *restmapper.DeferredDiscoveryRESTMapper, o *unstructured.Unstructured, dryRun bool) error {
	gvk := o.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("map %s: %w", gvk, err)
	}
	body, err := o.MarshalJSON()
	if err != nil {
		return err
	}
	force := true
	opts := metav1.PatchOptions{FieldManager: "warmpool-deploy-test", Force: &force}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	var r dynamic.ResourceInterface = dyn.Resource(m.Resource)
	if m.Scope.Name() == "namespace" {
		if o.GetNamespace() == "" {
			return fmt.Errorf("%s %s is namespaced and names no namespace", gvk.Kind, o.GetName())
		}
		r = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	_, err = r.Patch(ctx, o.GetName(), types.ApplyPatchType, body, opts)
	return err
}

// cniConfig returns the network config that the base's DaemonSet
// installs: the file its install-cni container's --conf names, from the
// ConfigMap mounted there.
func cniConfig(t *testing.T, objs []*unstructured.Unstructured) (name string, conf []byte) {
	t.Helper()
	ds := convert[appsv1.DaemonSet](t, find(objs, "DaemonSet", "warmpool-agent"))
	c := container(t, ds.Spec.Template.Spec.InitContainers, "install-cni")
	file := flagValue(c.Args, "conf")
	vol, _ := mountOf(t, ds.Spec.Template.Spec, c, file)
	if vol.ConfigMap == nil {
		t.Fatalf("--conf=%s is not in a ConfigMap's volume", file)
	}
	cm := convert[corev1.ConfigMap](t, find(objs, "ConfigMap", vol.ConfigMap.Name))
	name = path.Base(file)
	s, ok := cm.Data[name]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %s (--conf=%s)", cm.Name, name, file)
	}
	return name, []byte(s)
}

// TestCNIConfigIsValid: the config the agents install, and the Multus
// example's inline config, are accepted by libcni with the real plugins
// (each plugin exists and speaks the config's version) and by the
// installer, which installs it.
func TestCNIConfigIsValid(t *testing.T) {
	name, conf := cniConfig(t, builds(t)["deploy/base"])
	configs := map[string][]byte{name: conf}
	for _, nad := range decodeFile(t, "examples/multus-macvlan.yaml") {
		if s, ok, _ := unstructured.NestedString(nad.Object, "spec", "config"); ok {
			configs[nad.GetName()+".conflist"] = []byte(s)
		} else if name != nad.GetName()+".conflist" {
			t.Errorf("NetworkAttachmentDefinition %s has no config and the agents install none of its name (they install %s)", nad.GetName(), name)
		}
	}
	cniDir, pluginDir := testenv.CNIPluginDir(t), testenv.PluginDir(t)
	runtime := testenv.CNI(t, cniDir, pluginDir)
	for file, b := range configs {
		if err := install.ValidateConfig(file, b); err != nil {
			t.Errorf("%s: %v", file, err)
			continue
		}
		list, err := libcni.ConfListFromBytes(b)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if _, err := runtime.ValidateNetworkList(context.Background(), list); err != nil {
			t.Errorf("%s: libcni: %v", file, err)
		}
	}
	src := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(src, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	bin, confDir := t.TempDir(), t.TempDir()
	r, err := install.Install(install.Options{Plugin: filepath.Join(pluginDir, "warmpool"), BinDir: bin, Conf: src, ConfDir: confDir})
	if err != nil {
		t.Fatal(err)
	}
	// What Multus reads for a NetworkAttachmentDefinition without a
	// spec: the file whose name field is the object's name.
	list, err := libcni.ConfListFromFile(r.Conf)
	if err != nil {
		t.Fatal(err)
	}
	if list.Name+".conflist" != name {
		t.Errorf("the config is named %q in %s: Multus finds it by the name field", list.Name, name)
	}
	if _, err := testenv.CNI(t, cniDir, bin).ValidateNetworkList(context.Background(), list); err != nil {
		t.Errorf("the installed plugin: %v", err)
	}
}

// TestManifestsAgreeWithBinaries: every flag in the manifests' container
// args is one the binary defines, and the paths, ports and names that two
// sides must share agree: the socket, the CNI directories, the bus token,
// the metrics port the CLI proxies to, the images and the Dockerfiles.
func TestManifestsAgreeWithBinaries(t *testing.T) {
	agent := testenv.Binary(t, "warmpool-agent")
	flags := map[string][]string{
		"warmpool-agent":             helpFlags(t, agent),
		"warmpool-agent install-cni": helpFlags(t, agent, "install-cni"),
		"warmpool-allocator":         helpFlags(t, testenv.Binary(t, "warmpool-allocator")),
	}
	for cmd, f := range flags {
		if len(f) < 4 {
			t.Fatalf("%s -h listed flags %v", cmd, f)
		}
	}
	repo, tag := makeVar(t, "IMAGE_REPO"), makeVar(t, "IMAGE_TAG")
	natsVersion := moduleVersion(t, "github.com/nats-io/nats-server/v2")
	dockerfiles := map[string][]string{} // image name -> the paths its Dockerfile installs
	for _, name := range []string{"warmpool-agent", "warmpool-allocator"} {
		dockerfiles[name] = dockerfile(t, name)
	}
	for dir, objs := range builds(t) {
		t.Run(strings.ReplaceAll(dir, "/", "_"), func(t *testing.T) {
			external := dir != "deploy/base"
			for _, o := range objs {
				var spec corev1.PodSpec
				switch o.GetKind() {
				case "Deployment":
					spec = convert[appsv1.Deployment](t, o).Spec.Template.Spec
				case "DaemonSet":
					spec = convert[appsv1.DaemonSet](t, o).Spec.Template.Spec
				case "StatefulSet":
					spec = convert[appsv1.StatefulSet](t, o).Spec.Template.Spec
				default:
					continue
				}
				for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
					name, ours := ourImage(c.Image)
					if !ours {
						if c.Image != "nats:"+strings.TrimPrefix(natsVersion, "v")+"-alpine" {
							t.Errorf("%s: image %s: the external NATS runs the server version the allocator embeds (%s)", c.Name, c.Image, natsVersion)
						}
						continue
					}
					if want := repo + "/" + name + ":" + tag; c.Image != want {
						t.Errorf("%s: image %s, but make images builds %s", c.Name, c.Image, want)
					}
					cmd := name
					if len(c.Command) > 1 {
						cmd += " " + strings.Join(c.Command[1:], " ")
					}
					if len(c.Command) > 0 && !slices.Contains(dockerfiles[name], c.Command[0]) {
						t.Errorf("%s: command %s is not a file the image installs (%v)", c.Name, c.Command[0], dockerfiles[name])
					}
					known, ok := flags[cmd]
					if !ok {
						t.Fatalf("%s: no flags known for %q", c.Name, cmd)
					}
					for _, a := range c.Args {
						f, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
						if !strings.HasPrefix(a, "--") || !slices.Contains(known, f) {
							t.Errorf("%s: %q is not a flag of %s", c.Name, a, cmd)
						}
					}
					switch cmd {
					case "warmpool-allocator":
						checkAllocator(t, c, external)
					case "warmpool-agent":
						checkAgent(t, objs, o, spec, c, external)
					case "warmpool-agent install-cni":
						checkInstaller(t, spec, c, dockerfiles[name])
					}
				}
			}
			if external {
				checkNATSConf(t, objs)
			}
		})
	}
}

func checkAllocator(t *testing.T, c corev1.Container, external bool) {
	t.Helper()
	auth := flagValue(c.Args, "nats-agent-auth")
	if url := flagValue(c.Args, "nats-url"); url != "" {
		if !external || auth != "" {
			t.Errorf("--nats-url=%s with --nats-agent-auth=%q: the allocator refuses service-account auth with an external server", url, auth)
		}
		for _, p := range c.Ports {
			if p.ContainerPort == 4222 {
				t.Errorf("with --nats-url the allocator listens on no NATS port, but declares %d", p.ContainerPort)
			}
		}
	} else if auth != "serviceaccount" {
		t.Errorf("the embedded server authenticates agents with %q; the install must use serviceaccount", auth)
	}
	checkPort(t, c, "health", flagValue(c.Args, "health-addr"))
	for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Port.StrVal != "health" || p.HTTPGet.Path != metrics.HealthPath {
			t.Errorf("the allocator's probes must ask /healthz on the port served in both roles: %+v", p)
		}
	}
}

func checkAgent(t *testing.T, objs []*unstructured.Unstructured, o *unstructured.Unstructured, spec corev1.PodSpec, c corev1.Container, external bool) {
	t.Helper()
	ds := convert[appsv1.DaemonSet](t, o)
	if got := ds.Spec.Template.Labels["app.kubernetes.io/name"]; got != "warmpool-agent" {
		t.Errorf("the agents' pods are labelled app.kubernetes.io/name=%q; the CLI looks for warmpool-agent", got)
	}
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("the agent needs the host network and ClusterFirstWithHostNet to resolve the bus's Service")
	}
	// The plugin, on the host, dials the socket at the path the network
	// config (or its default) names: the container must see the host's
	// directory at the same path.
	socket := flagValue(c.Args, "socket")
	if socket == "" {
		socket = wire.DefaultSocket
	}
	if socket != wire.DefaultSocket {
		t.Errorf("--socket=%s, but the plugin's default is %s", socket, wire.DefaultSocket)
	}
	vol, mount := mountOf(t, spec, c, socket)
	if vol.HostPath == nil || vol.HostPath.Path != mount.MountPath || mount.MountPath != filepath.Dir(wire.DefaultSocket) {
		t.Errorf("the socket's directory is mounted as %+v from %+v, want the host's %s at the same path", mount, vol.VolumeSource, filepath.Dir(wire.DefaultSocket))
	}
	_, conf := cniConfig(t, objs)
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Plugins {
		// ParseConfig fills in the plugin's default socket.
		nc, _, err := cni.ParseConfig(p.Bytes)
		if err != nil {
			continue // not warmpool's
		}
		if nc.IPAM.Socket != socket {
			t.Errorf("the CNI config's socket %s is not the agent's %s", nc.IPAM.Socket, socket)
		}
	}
	if state := flagValue(c.Args, "state"); state == "" {
		t.Error("no --state: the record would live in the container")
	} else if vol, _ := mountOf(t, spec, c, state); vol.HostPath == nil {
		t.Errorf("--state=%s is not on the host: a restart would lose the record", state)
	}
	if token := flagValue(c.Args, "nats-token-file"); !external {
		vol, _ := mountOf(t, spec, c, token)
		ok := vol.Projected != nil && len(vol.Projected.Sources) == 1 && vol.Projected.Sources[0].ServiceAccountToken != nil &&
			vol.Projected.Sources[0].ServiceAccountToken.Audience == broker.DefaultAgentAudience
		if !ok {
			t.Errorf("--nats-token-file=%s is not a projected token for the audience %s", token, broker.DefaultAgentAudience)
		}
	} else if token != "" {
		t.Errorf("--nats-token-file with an external server: its tokens are for the embedded server's TokenReview")
	}
	addr := flagValue(c.Args, "metrics-addr")
	checkPort(t, c, "metrics", strings.ReplaceAll(addr, "$(HOST_IP)", "10.0.0.1"))
}

func checkInstaller(t *testing.T, spec corev1.PodSpec, c corev1.Container, installed []string) {
	t.Helper()
	if p := flagValue(c.Args, "plugin"); !slices.Contains(installed, p) || path.Base(p) != install.PluginName {
		t.Errorf("--plugin=%s: the image installs %v, and the runtime execs %s", p, installed, install.PluginName)
	}
	for flag, host := range map[string]string{"bin-dir": "/opt/cni/bin", "conf-dir": "/etc/cni/multus/net.d"} {
		dir := flagValue(c.Args, flag)
		vol, mount := mountOf(t, spec, c, dir)
		if vol.HostPath == nil || vol.HostPath.Path != host || dir != mount.MountPath {
			t.Errorf("--%s=%s is not the host's %s", flag, dir, host)
		}
		if vol.HostPath != nil && strings.HasPrefix(vol.HostPath.Path, "/etc/cni/net.d") {
			t.Errorf("--%s writes into /etc/cni/net.d, where the config could become the node's primary network", flag)
		}
	}
}

// checkPort: the container port named name is the port of addr.
func checkPort(t *testing.T, c corev1.Container, name, addr string) {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Errorf("%s address %q: %v", name, addr, err)
		return
	}
	for _, p := range c.Ports {
		if p.Name == name {
			if fmt.Sprint(p.ContainerPort) != port {
				t.Errorf("container port %s is %d, the binary listens on %s", name, p.ContainerPort, addr)
			}
			return
		}
	}
	t.Errorf("no container port named %s (the binary listens on %s)", name, addr)
}

// checkNATSConf parses the external servers' configuration with
// nats-server itself, and checks the users the components log in as.
func checkNATSConf(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	var conf string
	for _, o := range objs {
		if o.GetKind() == "ConfigMap" && strings.HasPrefix(o.GetName(), "warmpool-nats-config") {
			conf, _, _ = unstructured.NestedString(o.Object, "data", "nats.conf")
		}
	}
	if conf == "" {
		t.Fatal("no nats.conf in the overlay")
	}
	file := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, env := range []string{"POD_NAME", "ALLOCATOR_PASSWORD", "AGENT_PASSWORD"} {
		t.Setenv(env, "x"+strings.ToLower(env))
	}
	opts, err := natsserver.ProcessConfigFile(file)
	if err != nil {
		t.Fatalf("nats.conf: %v", err)
	}
	users := map[string]*natsserver.User{}
	for _, u := range opts.Users {
		users[u.Username] = u
	}
	alloc, agent := users["warmpool-allocator"], users["warmpool-agent"]
	if alloc == nil || agent == nil || alloc.Password != "xallocator_password" || agent.Password != "xagent_password" {
		t.Fatalf("nats.conf users %v: want warmpool-allocator and warmpool-agent with passwords from the environment", users)
	}
	want := broker.AgentPermissions("node-1")
	if agent.Permissions == nil || agent.Permissions.Publish == nil || agent.Permissions.Subscribe == nil || agent.Permissions.Response == nil {
		t.Fatalf("the agents' user has no permissions: it could publish grants to every node")
	}
	// The shared user's permissions are the embedded server's per-node
	// ones with the node's token as a wildcard.
	generalise := func(subjects []string) []string {
		out := make([]string, len(subjects))
		for i, s := range subjects {
			out[i] = strings.Replace(s, ".node-1.", ".", 1)
		}
		return out
	}
	if got, w := agent.Permissions.Publish.Allow, generalise(want.Publish.Allow); !slices.Equal(got, w) {
		t.Errorf("the agents may publish on %v, want %v", got, w)
	}
	if got, w := agent.Permissions.Subscribe.Allow, generalise(want.Subscribe.Allow); !slices.Equal(got, w) {
		t.Errorf("the agents may subscribe to %v, want %v", got, w)
	}
	for _, o := range objs {
		var c []corev1.Container
		switch o.GetKind() {
		case "Deployment":
			c = convert[appsv1.Deployment](t, o).Spec.Template.Spec.Containers
		case "DaemonSet":
			c = convert[appsv1.DaemonSet](t, o).Spec.Template.Spec.Containers
		default:
			continue
		}
		if u := flagValue(c[0].Args, "nats-user"); users[u] == nil {
			t.Errorf("%s logs in as %q, not a user of nats.conf", o.GetName(), u)
		}
	}
}

// helpFlags returns the flag names that `bin args... -h` lists.
func helpFlags(t *testing.T, bin string, args ...string) []string {
	t.Helper()
	out, err := exec.Command(bin, append(args, "-h")...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v -h: %v\n%s", bin, args, err, out)
	}
	var flags []string
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllSubmatch(out, -1) {
		flags = append(flags, string(m[1]))
	}
	return flags
}

// flagValue returns the value of --name=value in args, or "".
func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

func container(t *testing.T, cs []corev1.Container, name string) corev1.Container {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return corev1.Container{}
}

// mountOf returns the volume, and its mount, that holds p in container c.
func mountOf(t *testing.T, spec corev1.PodSpec, c corev1.Container, p string) (corev1.Volume, corev1.VolumeMount) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/") {
			for _, v := range spec.Volumes {
				if v.Name == m.Name {
					return v, m
				}
			}
			t.Fatalf("%s: mount %s names no volume", c.Name, m.Name)
		}
	}
	t.Errorf("%s: %q is in no volume", c.Name, p)
	return corev1.Volume{}, corev1.VolumeMount{}
}

// ourImage says whether image is one of warmpool's, and which.
func ourImage(image string) (string, bool) {
	for _, name := range []string{"warmpool-agent", "warmpool-allocator"} {
		if strings.Contains(image, "/"+name+":") {
			return name, true
		}
	}
	return "", false
}

// TestImagesAgreeWithDockerfiles: `make images` (package images, no
// docker) and `make docker-images` (the Dockerfiles) build images of the
// same names that install the same binaries and run the same entrypoint
// as the same user.
func TestImagesAgreeWithDockerfiles(t *testing.T) {
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(mk, []byte("./manifests/images/build --bin-dir bin --repo $(IMAGE_REPO) --tag $(IMAGE_TAG) ")) {
		t.Errorf("make images does not name the images $(IMAGE_REPO)/<name>:$(IMAGE_TAG)")
	}
	var names []string
	for _, s := range images.Specs {
		names = append(names, s.Name)
		installed := dockerfile(t, s.Name)
		var want []string
		for _, b := range s.Binaries {
			want = append(want, "/"+b)
		}
		if !slices.Equal(installed, want) {
			t.Errorf("%s: the Dockerfile installs %v, make images %v", s.Name, installed, want)
		}
		b, err := os.ReadFile("images/" + strings.TrimPrefix(s.Name, "warmpool-") + ".Dockerfile")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte("\nUSER "+s.User+"\n")) {
			t.Errorf("%s: the Dockerfile does not say USER %s", s.Name, s.User)
		}
		if !bytes.Contains(b, []byte(`ENTRYPOINT ["/`+s.Name+`"]`)) {
			t.Errorf("%s: the Dockerfile's entrypoint is not /%s", s.Name, s.Name)
		}
	}
	if want := []string{"warmpool-agent", "warmpool-allocator"}; !slices.Equal(slices.Sorted(slices.Values(names)), want) {
		t.Errorf("make images builds %v, the manifests run %v", names, want)
	}
}

// makeVar returns the default of `NAME ?= value` in the Makefile.
func makeVar(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + name + ` \?= (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no %s ?= in the Makefile", name)
	}
	return string(m[1])
}

func moduleVersion(t *testing.T, module string) string {
	t.Helper()
	b, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(module) + ` (v\S+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s not in go.mod", module)
	}
	return string(m[1])
}

// dockerfile checks images/<x>.Dockerfile for the image name and returns
// the paths it installs in the image; every package it builds must be a
// main package, and `make images` must build it under name.
func dockerfile(t *testing.T, name string) []string {
	t.Helper()
	short := strings.TrimPrefix(name, "warmpool-")
	file := "images/" + short + ".Dockerfile"
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(mk, []byte("-f manifests/"+file+" -t $(IMAGE_REPO)/"+name+":$(IMAGE_TAG) .")) {
		t.Errorf("make images does not build %s as $(IMAGE_REPO)/%s:$(IMAGE_TAG)", file, name)
	}
	builds := regexp.MustCompile(`go build -trimpath [^\n]*?-o (\S+) (\./cmd/\S+)`).FindAllSubmatch(b, -1)
	if len(builds) == 0 {
		t.Fatalf("%s builds nothing with go build -trimpath", file)
	}
	built := map[string]bool{}
	for _, m := range builds {
		pkg, err := build.ImportDir(filepath.Join("..", string(m[2])), 0)
		if err != nil || pkg.Name != "main" {
			t.Errorf("%s builds %s, which is not a main package: %v", file, m[2], err)
		}
		built[string(m[1])] = true
	}
	if !bytes.Contains(b, []byte("CGO_ENABLED=0 go build")) {
		t.Errorf("%s: the binaries must be static (CGO_ENABLED=0) for distroless/static", file)
	}
	var installed []string
	for _, m := range regexp.MustCompile(`(?m)^COPY --from=build (\S+) (\S+)$`).FindAllSubmatch(b, -1) {
		if !built[string(m[1])] {
			t.Errorf("%s copies %s, which it does not build", file, m[1])
		}
		installed = append(installed, string(m[2]))
	}
	if !slices.Contains(installed, "/"+name) {
		t.Errorf("%s does not install /%s", file, name)
	}
	return installed
}
