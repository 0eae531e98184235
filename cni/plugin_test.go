package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/cni/shim"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

const goodConf = `{"cniVersion":"1.1.0","name":"underlay","type":"macvlan","ipam":{"type":"warmpool","pool":"underlay-dual","socket":"/tmp/none.sock","timeout":"2s"}}`

const podArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u-1;K8S_POD_INFRA_CONTAINER_ID=c1"

// wantCNIError checks that err is a CNI error with exactly code, msg and
// details. details "*" accepts any non-empty details (text that comes from
// a library or the OS, not from warmpool); a details ending in "*" is an
// exact prefix.
func wantCNIError(t *testing.T, err error, code uint, msg, details string) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v (%T), want CNI error %d %q", err, err, code, msg)
	}
	if e.Code != code || e.Msg != msg {
		t.Fatalf("got code %d %q (details %q)\nwant code %d %q", e.Code, e.Msg, e.Details, code, msg)
	}
	switch {
	case details == "*":
		if e.Details == "" {
			t.Fatalf("code %d %q: details empty, want some", code, msg)
		}
	case strings.HasSuffix(details, "*"):
		if !strings.HasPrefix(e.Details, strings.TrimSuffix(details, "*")) {
			t.Fatalf("code %d %q: details %q, want prefix %q", code, msg, e.Details, strings.TrimSuffix(details, "*"))
		}
	case e.Details != details:
		t.Fatalf("code %d %q: details %q, want %q", code, msg, e.Details, details)
	}
}

func TestParseConfigErrors(t *testing.T) {
	long := strings.Repeat("a", 254)
	for _, tc := range []struct {
		name, conf   string
		code         uint
		msg, details string
	}{
		{"not json", `{"ipam":`, types.ErrDecodingFailure, "the network config is not valid JSON", "*"},
		{"ipam not an object", `{"name":"n","ipam":"warmpool"}`, types.ErrDecodingFailure, "the network config is not valid JSON", "*"},
		{"pool not a string", `{"name":"n","ipam":{"type":"warmpool","pool":7}}`, types.ErrDecodingFailure, "the network config is not valid JSON", "*"},
		{"other ipam", `{"name":"n","ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig, `ipam.type is "host-local"; this plugin is "warmpool"`, ""},
		{"no ipam", `{"name":"n"}`, types.ErrInvalidNetworkConfig, `ipam.type is ""; this plugin is "warmpool"`, ""},
		{"ipam type in another case", `{"name":"n","ipam":{"type":"Warmpool"}}`, types.ErrInvalidNetworkConfig, `ipam.type is "Warmpool"; this plugin is "warmpool"`, ""},
		{"bad pool", `{"name":"n","ipam":{"type":"warmpool","pool":"Under_Lay"}}`, types.ErrInvalidNetworkConfig,
			`ipam.pool "Under_Lay" is not a valid IPPool name`, "use the name of an IPPool object (lower-case DNS subdomain)"},
		{"pool ends in a dash", `{"name":"n","ipam":{"type":"warmpool","pool":"under-"}}`, types.ErrInvalidNetworkConfig,
			`ipam.pool "under-" is not a valid IPPool name`, "use the name of an IPPool object (lower-case DNS subdomain)"},
		{"pool of 254 characters", `{"name":"n","ipam":{"type":"warmpool","pool":"` + long + `"}}`, types.ErrInvalidNetworkConfig,
			`ipam.pool "` + long + `" is not a valid IPPool name`, "use the name of an IPPool object (lower-case DNS subdomain)"},
		{"bad timeout", `{"name":"n","ipam":{"type":"warmpool","timeout":"soon"}}`, types.ErrInvalidNetworkConfig, `ipam.timeout "soon" is not a positive duration`, `write it like "10s"`},
		{"timeout without unit", `{"name":"n","ipam":{"type":"warmpool","timeout":"10"}}`, types.ErrInvalidNetworkConfig, `ipam.timeout "10" is not a positive duration`, `write it like "10s"`},
		{"negative timeout", `{"name":"n","ipam":{"type":"warmpool","timeout":"-1s"}}`, types.ErrInvalidNetworkConfig, `ipam.timeout "-1s" is not a positive duration`, `write it like "10s"`},
		{"zero timeout", `{"name":"n","ipam":{"type":"warmpool","timeout":"0s"}}`, types.ErrInvalidNetworkConfig, `ipam.timeout "0s" is not a positive duration`, `write it like "10s"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseConfig([]byte(tc.conf))
			wantCNIError(t, err, tc.code, tc.msg, tc.details)
			// Every operation parses the config first: the runtime sees the same error.
			for op, run := range map[string]func(*Plugin, *skel.CmdArgs) error{
				"ADD": (*Plugin).add, "DEL": (*Plugin).del, "CHECK": (*Plugin).check, "GC": (*Plugin).gc, "STATUS": (*Plugin).status,
			} {
				f := &fakeAgent{answer: func(*wire.Request) *wire.Response { t.Fatalf("%s: agent called", op); return nil }}
				wantCNIError(t, run(&Plugin{Handle: f.handle}, args(tc.conf)), tc.code, tc.msg, tc.details)
			}
		})
	}
	conf, timeout, err := ParseConfig([]byte(`{"name":"n","ipam":{"type":"warmpool"}}`))
	if err != nil || conf.IPAM.Socket != "" || timeout != shim.DefaultTimeout {
		t.Fatalf("defaults: %+v %s %v", conf, timeout, err)
	}
	long = strings.Repeat("a", 253)
	if conf, _, err := ParseConfig([]byte(`{"name":"n","ipam":{"type":"warmpool","pool":"` + long + `"}}`)); err != nil || conf.IPAM.Pool != long {
		t.Fatalf("a pool name of 253 characters: %v", err)
	}
}

func TestParseArgs(t *testing.T) {
	pod, err := ParseArgs(podArgs)
	if err != nil || pod != (wire.Pod{Namespace: "default", Name: "web-0", UID: "u-1"}) {
		t.Fatalf("got %+v, %v", pod, err)
	}
	if pod, err := ParseArgs(""); err != nil || pod != (wire.Pod{}) {
		t.Fatalf("empty CNI_ARGS: %+v, %v", pod, err)
	}
	// Unknown keys are ignored (IgnoreUnknown is on by default here).
	if pod, err := ParseArgs("FOO=bar;K8S_POD_NAMESPACE=a;K8S_POD_NAME=b"); err != nil || pod != (wire.Pod{Namespace: "a", Name: "b"}) {
		t.Fatalf("unknown key: %+v, %v", pod, err)
	}
	for _, bad := range []string{
		"K8S_POD_NAME",                        // no "="
		"K8S_POD_NAME=a=b",                    // two "="
		"K8S_POD_NAMESPACE=a;;K8S_POD_NAME=b", // an empty pair
		"K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;", // a trailing ";" is an empty pair
		"IgnoreUnknown=0;FOO=bar",             // unknown keys refused when asked to
		"IgnoreUnknown=maybe",                 // not a boolean
		"CommonArgs=x",                        // a field that is not a value
	} {
		t.Run(bad, func(t *testing.T) {
			_, err := ParseArgs(bad)
			wantCNIError(t, err, types.ErrInvalidEnvironmentVariables, "CNI_ARGS cannot be parsed", "ARGS: *")
			// ADD, DEL and CHECK read CNI_ARGS: the runtime sees the same error.
			for op, run := range map[string]func(*Plugin, *skel.CmdArgs) error{"ADD": (*Plugin).add, "DEL": (*Plugin).del, "CHECK": (*Plugin).check} {
				f := &fakeAgent{answer: func(*wire.Request) *wire.Response { t.Fatalf("%s: agent called", op); return nil }}
				a := args(goodConf)
				a.Args = bad
				wantCNIError(t, run(&Plugin{Handle: f.handle}, a), types.ErrInvalidEnvironmentVariables, "CNI_ARGS cannot be parsed", "ARGS: *")
			}
		})
	}
}

// fakeAgent answers from a function, recording requests.
type fakeAgent struct {
	reqs   []*wire.Request
	answer func(*wire.Request) *wire.Response
}

func (f *fakeAgent) handle(_ context.Context, req *wire.Request) *wire.Response {
	f.reqs = append(f.reqs, req)
	return f.answer(req)
}

// The operations as the tests call them: no context to cancel, the output
// dropped.
func (p *Plugin) add(a *skel.CmdArgs) error    { return p.Add(context.Background(), a, io.Discard) }
func (p *Plugin) del(a *skel.CmdArgs) error    { return p.Del(context.Background(), a, io.Discard) }
func (p *Plugin) check(a *skel.CmdArgs) error  { return p.Check(context.Background(), a, io.Discard) }
func (p *Plugin) gc(a *skel.CmdArgs) error     { return p.GC(context.Background(), a, io.Discard) }
func (p *Plugin) status(a *skel.CmdArgs) error { return p.Status(context.Background(), a, io.Discard) }

func args(conf string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: "c1", Netns: "/run/netns/x", IfName: "eth0", Args: podArgs, StdinData: []byte(conf)}
}

func TestAddNeedsPodArgs(t *testing.T) {
	for _, cniArgs := range []string{
		"",
		"K8S_POD_NAMESPACE=default",
		"K8S_POD_NAME=web-0",
		"K8S_POD_NAMESPACE=;K8S_POD_NAME=",
		"IgnoreUnknown=1;K8S_POD_UID=u-1;K8S_POD_INFRA_CONTAINER_ID=c1",
	} {
		t.Run(cniArgs, func(t *testing.T) {
			f := &fakeAgent{answer: func(*wire.Request) *wire.Response { t.Fatal("agent called"); return nil }}
			a := args(goodConf)
			a.Args = cniArgs
			wantCNIError(t, (&Plugin{Handle: f.handle}).add(a), types.ErrInvalidEnvironmentVariables,
				"CNI_ARGS lacks K8S_POD_NAMESPACE or K8S_POD_NAME", "warmpool allocates per Kubernetes pod: the runtime (kubelet) must pass them")
		})
	}
	// DEL and CHECK do not need the pod: the attachment identifies the assignment.
	f := &fakeAgent{answer: func(*wire.Request) *wire.Response { return &wire.Response{} }}
	a := args(goodConf)
	a.Args = ""
	if err := (&Plugin{Handle: f.handle}).del(a); err != nil {
		t.Fatalf("DEL without pod args: %v", err)
	}
	if err := (&Plugin{Handle: f.handle}).check(a); err != nil {
		t.Fatalf("CHECK without pod args: %v", err)
	}
}

// TestAgentErrorsBecomeCNIErrors: every error the agent answers reaches
// the runtime as a CNI error with its exact code, message and details, and
// an ADD answer that cannot be printed is an internal error.
func TestAgentErrorsBecomeCNIErrors(t *testing.T) {
	agentSays := func(code uint, msg, details string) *wire.Response {
		return &wire.Response{Error: &wire.Error{Code: code, Msg: msg, Details: details}}
	}
	for _, tc := range []struct {
		name         string
		op           func(*Plugin, *skel.CmdArgs) error
		resp         *wire.Response
		code         uint
		msg, details string
	}{
		// The agent's own errors pass through unchanged.
		{"add unknown pool", (*Plugin).add, agentSays(wire.CodeUnknownPool, `pool "nope" does not exist`, "create it"), wire.CodeUnknownPool, `pool "nope" does not exist`, "create it"},
		{"add no pool", (*Plugin).add, agentSays(wire.CodeNoPool, "no pool for pod default/web-0", "name one"), wire.CodeNoPool, "no pool for pod default/web-0", "name one"},
		{"add exhausted", (*Plugin).add, agentSays(wire.CodePoolExhausted, "pool underlay-dual is exhausted", ""), wire.CodePoolExhausted, "pool underlay-dual is exhausted", ""},
		{"add pod not found", (*Plugin).add, agentSays(wire.CodePodNotFound, "pod default/web-0 is not in the API", "deleted?"), wire.CodePodNotFound, "pod default/web-0 is not in the API", "deleted?"},
		{"add miss timeout", (*Plugin).add, agentSays(wire.CodeMissTimeout, "node n holds no warm address of pool p", "later"), wire.CodeMissTimeout, "node n holds no warm address of pool p", "later"},
		{"add version refused by the agent", (*Plugin).add, agentSays(wire.CodeIncompatible, "the plugin speaks protocol v0, this agent v1", "upgrade"), wire.CodeIncompatible, "the plugin speaks protocol v0, this agent v1", "upgrade"},
		{"check mismatch", (*Plugin).check, agentSays(wire.CodeCheckMismatch, "c1/eth0 holds no address", "re-create"), wire.CodeCheckMismatch, "c1/eth0 holds no address", "re-create"},
		{"del store failure", (*Plugin).del, agentSays(wire.CodeIOFailure, "the agent could not record the release", "disk"), wire.CodeIOFailure, "the agent could not record the release", "disk"},
		{"gc failure", (*Plugin).gc, agentSays(wire.CodeInvalidEnv, "CNI_CONTAINERID and CNI_IFNAME are required", ""), wire.CodeInvalidEnv, "CNI_CONTAINERID and CNI_IFNAME are required", ""},
		{"status not available", (*Plugin).status, agentSays(wire.CodeNotAvailable, "node n holds no warm address of any pool and no allocator is connected", ""), wire.CodeNotAvailable, "node n holds no warm address of any pool and no allocator is connected", ""},
		// An ADD answer the plugin cannot use.
		{"add no result", (*Plugin).add, &wire.Response{}, types.ErrInternal, "the warmpool agent answered ADD without a result", ""},
		{"add bad address", (*Plugin).add, &wire.Response{Result: &wire.Result{IPs: []wire.Address{{CIDR: "nonsense"}}}},
			types.ErrInternal, "the warmpool agent answered ADD with a malformed result", `address "nonsense": *`},
		{"add bad gateway", (*Plugin).add, &wire.Response{Result: &wire.Result{IPs: []wire.Address{{CIDR: "10.0.0.5/24", Gateway: "10.0.0"}}}},
			types.ErrInternal, "the warmpool agent answered ADD with a malformed result", `gateway "10.0.0" is not an address`},
		{"add bad route", (*Plugin).add, &wire.Response{Result: &wire.Result{IPs: []wire.Address{{CIDR: "10.0.0.5/24"}}, Routes: []wire.Route{{Dst: "default"}}}},
			types.ErrInternal, "the warmpool agent answered ADD with a malformed result", `route "default": *`},
		{"add bad route gateway", (*Plugin).add, &wire.Response{Result: &wire.Result{IPs: []wire.Address{{CIDR: "10.0.0.5/24"}}, Routes: []wire.Route{{Dst: "0.0.0.0/0", GW: "x"}}}},
			types.ErrInternal, "the warmpool agent answered ADD with a malformed result", `route gateway "x" is not an address`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeAgent{answer: func(*wire.Request) *wire.Response { return tc.resp }}
			wantCNIError(t, tc.op(&Plugin{Handle: f.handle}, args(goodConf)), tc.code, tc.msg, tc.details)
		})
	}
}

// TestRuntimeSeesEntryPointErrors: the agent checks each forwarded exec
// as skel checks a plugin's, with skel's codes and messages, before the
// plugin's own checks.
func TestRuntimeSeesEntryPointErrors(t *testing.T) {
	conf := func(version string) string {
		return fmt.Sprintf(`{"cniVersion":%q,"name":"underlay","type":"macvlan","ipam":{"type":"warmpool"}}`, version)
	}
	good := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
		"CNI_PATH": "/opt/cni/bin", "CNI_ARGS": podArgs}
	with := func(k, v string) map[string]string {
		m := maps.Clone(good)
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	for _, tc := range []struct {
		name         string
		env          map[string]string
		stdin        string
		code         uint
		msg, details string
	}{
		{"no CNI_COMMAND", with("CNI_COMMAND", ""), conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "required env variables [CNI_COMMAND] missing", ""},
		{"no CNI_CONTAINERID", with("CNI_CONTAINERID", ""), conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "required env variables [CNI_CONTAINERID] missing", ""},
		{"no CNI_IFNAME", with("CNI_IFNAME", ""), conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "required env variables [CNI_IFNAME] missing", ""},
		{"no CNI_NETNS", with("CNI_NETNS", ""), conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "required env variables [CNI_NETNS] missing", ""},
		{"no CNI_PATH nor CNI_IFNAME", with("CNI_PATH", ""), conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "required env variables [CNI_PATH] missing", ""},
		{"bad CNI_CONTAINERID", with("CNI_CONTAINERID", "c 1"), conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "invalid characters in containerID", "c 1"},
		{"bad CNI_IFNAME", with("CNI_IFNAME", "eth/0"), conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "interface name contains / or : or whitespace characters", ""},
		{"unknown CNI_COMMAND", with("CNI_COMMAND", "FROB"), conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "unknown CNI_COMMAND: FROB", ""},
		{"config not JSON", good, `{"name":`, types.ErrDecodingFailure, "error unmarshall network config: unexpected end of JSON input", ""},
		{"config without a name", good, `{"cniVersion":"1.1.0","ipam":{"type":"warmpool"}}`, types.ErrInvalidNetworkConfig, "missing network name", ""},
		{"network name with a slash", good, `{"cniVersion":"1.1.0","name":"a/b","ipam":{"type":"warmpool"}}`, types.ErrInvalidNetworkConfig, "invalid characters found in network name", "a/b"},
		{"unsupported cniVersion", good, conf("0.2.0"), types.ErrIncompatibleCNIVersion, "incompatible CNI versions", "*"},
		{"cniVersion not a version", good, conf("one"), types.ErrIncompatibleCNIVersion, "incompatible CNI versions", "*"},
		{"CHECK of a cniVersion that is not a version", with("CNI_COMMAND", "CHECK"), conf("one"), types.ErrDecodingFailure, "*", ""},
		{"CHECK below 0.4.0", with("CNI_COMMAND", "CHECK"), conf("0.3.1"), types.ErrIncompatibleCNIVersion, "config version does not allow CHECK", ""},
		{"GC below 1.1.0", with("CNI_COMMAND", "GC"), conf("1.0.0"), types.ErrIncompatibleCNIVersion, "config version does not allow GC", ""},
		{"STATUS below 1.1.0", with("CNI_COMMAND", "STATUS"), conf("0.4.0"), types.ErrIncompatibleCNIVersion, "config version does not allow STATUS", ""},
		// Past skel's checks, the plugin's own errors.
		{"ipam section wrong", good, `{"cniVersion":"1.1.0","name":"underlay","ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig, `ipam.type is "host-local"; this plugin is "warmpool"`, ""},
		{"ipam not an object", good, `{"cniVersion":"1.1.0","name":"underlay","ipam":"warmpool"}`, types.ErrDecodingFailure, "the network config is not valid JSON", "*"},
		{"no pod in CNI_ARGS", with("CNI_ARGS", "IgnoreUnknown=1"), conf("1.1.0"), types.ErrInvalidEnvironmentVariables,
			"CNI_ARGS lacks K8S_POD_NAMESPACE or K8S_POD_NAME", "warmpool allocates per Kubernetes pod: the runtime (kubelet) must pass them"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeAgent{answer: func(*wire.Request) *wire.Response { t.Fatal("agent called"); return nil }}
			out, exit := Serve(context.Background(), f.handle, &wire.Invocation{Env: tc.env, Stdin: []byte(tc.stdin)})
			if exit != 1 {
				t.Errorf("exit %d, want 1", exit)
			}
			e := &types.Error{}
			if err := json.Unmarshal(out, e); err != nil {
				t.Fatalf("printed %q: %v", out, err)
			}
			if tc.msg == "*" {
				if e.Code != tc.code || e.Msg == "" {
					t.Fatalf("got %d %q, want code %d", e.Code, e.Msg, tc.code)
				}
				return
			}
			wantCNIError(t, e, tc.code, tc.msg, tc.details)
		})
	}
}

// TestServePrintsWhatSkelWould: a successful ADD prints the result in the
// config's CNI version, DEL prints nothing, and VERSION (which the plugin
// binary answers itself) what skel prints for the same versions.
func TestServePrintsWhatSkelWould(t *testing.T) {
	f := &fakeAgent{answer: func(r *wire.Request) *wire.Response {
		if r.Op != wire.OpAdd {
			return &wire.Response{}
		}
		return &wire.Response{Result: &wire.Result{Pool: "p", Hit: true, IPs: []wire.Address{{CIDR: "10.0.0.5/24", Gateway: "10.0.0.1"}, {CIDR: "fd00::5/64"}}}}
	}}
	env := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
		"CNI_PATH": "/opt/cni/bin", "CNI_ARGS": podArgs}
	for _, v := range Versions.SupportedVersions() {
		stdin := fmt.Sprintf(`{"cniVersion":%q,"name":"underlay","ipam":{"type":"warmpool"}}`, v)
		out, exit := Serve(context.Background(), f.handle, &wire.Invocation{Env: env, Stdin: []byte(stdin)})
		if exit != 0 {
			t.Fatalf("%s: exit %d: %s", v, exit, out)
		}
		r, err := ToCNIResult(f.answer(&wire.Request{Op: wire.OpAdd}).Result)
		if err != nil {
			t.Fatal(err)
		}
		conv, err := r.GetAsVersion(v)
		if err != nil {
			t.Fatal(err)
		}
		var want bytes.Buffer
		if err := conv.PrintTo(&want); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, want.Bytes()) {
			t.Errorf("%s: printed\n%s\nwant\n%s", v, out, want.Bytes())
		}
	}
	del := maps.Clone(env)
	del["CNI_COMMAND"] = "DEL"
	if out, exit := Serve(context.Background(), f.handle, &wire.Invocation{Env: del, Stdin: []byte(goodConf)}); exit != 0 || len(out) != 0 {
		t.Errorf("DEL: exit %d, printed %q", exit, out)
	}
	var skelSays, shimSays bytes.Buffer
	if err := Versions.Encode(&skelSays); err != nil {
		t.Fatal(err)
	}
	if exit := shim.Main(func(k string) string { return map[string]string{"CNI_COMMAND": "VERSION"}[k] }, strings.NewReader(""), &shimSays, io.Discard); exit != 0 ||
		shimSays.String() != skelSays.String() {
		t.Errorf("VERSION: the plugin printed %q (exit %d), skel would print %q", shimSays.String(), exit, skelSays.String())
	}
	if out, exit := Serve(context.Background(), f.handle, &wire.Invocation{Env: map[string]string{"CNI_COMMAND": "VERSION"}}); exit != 0 ||
		string(out) != skelSays.String() {
		t.Errorf("VERSION to the agent: %q (exit %d)", out, exit)
	}
}

func TestRequestsCarryTheAttachment(t *testing.T) {
	f := &fakeAgent{answer: func(*wire.Request) *wire.Response { return &wire.Response{} }}
	p := &Plugin{Handle: f.handle}
	if err := p.del(args(goodConf)); err != nil {
		t.Fatal(err)
	}
	gc := `{"cniVersion":"1.1.0","name":"underlay","ipam":{"type":"warmpool"},"cni.dev/valid-attachments":[{"containerID":"c2","ifname":"eth0"}]}`
	if err := p.gc(&skel.CmdArgs{StdinData: []byte(gc)}); err != nil {
		t.Fatal(err)
	}
	del, gcReq := f.reqs[0], f.reqs[1]
	want := wire.Request{Op: wire.OpDel, Network: "underlay", Pool: "underlay-dual",
		Attachment: wire.Attachment{ContainerID: "c1", IfName: "eth0"}, Netns: "/run/netns/x",
		Pod: wire.Pod{Namespace: "default", Name: "web-0", UID: "u-1"}}
	if fmt.Sprint(*del) != fmt.Sprint(want) {
		t.Errorf("DEL request %+v, want %+v", *del, want)
	}
	if gcReq.Op != wire.OpGC || len(gcReq.Valid) != 1 || gcReq.Valid[0] != (wire.Attachment{ContainerID: "c2", IfName: "eth0"}) {
		t.Errorf("GC request %+v", *gcReq)
	}
}

func TestCheckComparesPrevResult(t *testing.T) {
	held := &wire.Response{Result: &wire.Result{IPs: []wire.Address{{CIDR: "10.0.0.5/24"}, {CIDR: "fd00::5/64"}}}}
	f := &fakeAgent{answer: func(*wire.Request) *wire.Response { return held }}
	p := &Plugin{Handle: f.handle}
	withPrev := func(ips ...string) string {
		var parts []string
		for _, ip := range ips {
			parts = append(parts, fmt.Sprintf(`{"address":%q}`, ip))
		}
		return `{"cniVersion":"1.1.0","name":"underlay","ipam":{"type":"warmpool"},"prevResult":{"cniVersion":"1.1.0","ips":[` + strings.Join(parts, ",") + `]}}`
	}
	if err := p.check(args(withPrev("10.0.0.5/24", "fd00::5/64"))); err != nil {
		t.Fatalf("matching CHECK: %v", err)
	}
	err := p.check(args(withPrev("10.0.0.6/24")))
	if err == nil || testenv.CNICode(err) != wire.CodeCheckMismatch || !strings.Contains(err.Error(), "10.0.0.6/24 is no longer assigned") {
		t.Fatalf("mismatching CHECK: %v", err)
	}
}

func TestToCNIResultConvertsToEveryVersion(t *testing.T) {
	r, err := ToCNIResult(&wire.Result{
		IPs:    []wire.Address{{CIDR: "10.0.0.5/24", Gateway: "10.0.0.1"}, {CIDR: "fd00::5/64", Gateway: "fd00::1"}},
		Routes: []wire.Route{{Dst: "0.0.0.0/0", GW: "10.0.0.1"}, {Dst: "::/0"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.IPs[0].Address.String() != "10.0.0.5/24" || r.IPs[1].Gateway.String() != "fd00::1" || len(r.Routes) != 2 {
		t.Fatalf("result %+v", r)
	}
	for _, v := range Versions.SupportedVersions() {
		converted, err := r.GetAsVersion(v)
		if err != nil {
			t.Errorf("convert to %s: %v", v, err)
			continue
		}
		if converted.Version() != v {
			t.Errorf("converted to %s, got %s", v, converted.Version())
		}
	}
	back, err := types100.NewResultFromResult(r)
	if err != nil || len(back.IPs) != 2 {
		t.Fatalf("round trip: %v %+v", err, back)
	}
}

// plainNetConf is NetConf without the embedding: *NetConf inherits
// types.NetConf's MarshalJSON, which writes only the embedded fields and
// would drop the ipam section this plugin reads.
type plainNetConf struct {
	CNIVersion       string               `json:"cniVersion,omitempty"`
	Name             string               `json:"name,omitempty"`
	Type             string               `json:"type,omitempty"`
	Capabilities     map[string]bool      `json:"capabilities,omitempty"`
	IPAM             IPAMConfig           `json:"ipam"`
	DNS              types.DNS            `json:"dns,omitzero"`
	RawPrevResult    map[string]any       `json:"prevResult,omitempty"`
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments,omitempty"`
}

func plain(c *NetConf) plainNetConf {
	return plainNetConf{CNIVersion: c.CNIVersion, Name: c.Name, Type: c.Type, Capabilities: c.Capabilities, IPAM: c.IPAM,
		DNS: c.DNS, RawPrevResult: c.RawPrevResult, ValidAttachments: c.ValidAttachments}
}

// FuzzParseConfig: any input either parses or fails with the CNI error its
// first defect calls for (6 for what is not a config, 7 for a wrong ipam
// section); it never panics. What parses has type warmpool, the socket it
// names (the plugin binary reads it; the agent keeps it as given), a
// pool that is empty or a DNS subdomain (checked against the apiserver's
// own rule), the timeout it names (or the default), and is stable: written
// back out and parsed again, it is the same config.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(goodConf))
	f.Add([]byte(`{"name":"n","ipam":{"type":"warmpool"}}`))
	f.Add([]byte(`{"name":"n","ipam":{"type":"warmpool","timeout":"1h"}}`))
	f.Add([]byte(`{"ipam":{"type":"warmpool","pool":"a.b-c"},"cni.dev/valid-attachments":[{"containerID":"c","ifname":"e"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		conf, timeout, err := ParseConfig(b)
		// What the config says, read independently.
		var raw NetConf
		jsonErr := json.Unmarshal(b, &raw)
		var wantCode uint
		var wantMsg string
		switch {
		case jsonErr != nil:
			wantCode, wantMsg = types.ErrDecodingFailure, "the network config is not valid JSON"
		case raw.IPAM.Type != PluginType:
			wantCode, wantMsg = types.ErrInvalidNetworkConfig, fmt.Sprintf("ipam.type is %q; this plugin is %q", raw.IPAM.Type, PluginType)
		case raw.IPAM.Pool != "" && len(validation.IsDNS1123Subdomain(raw.IPAM.Pool)) > 0:
			wantCode, wantMsg = types.ErrInvalidNetworkConfig, fmt.Sprintf("ipam.pool %q is not a valid IPPool name", raw.IPAM.Pool)
		case raw.IPAM.Timeout != "":
			if d, err := time.ParseDuration(raw.IPAM.Timeout); err != nil || d <= 0 {
				wantCode, wantMsg = types.ErrInvalidNetworkConfig, fmt.Sprintf("ipam.timeout %q is not a positive duration", raw.IPAM.Timeout)
			}
		}
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code != wantCode || e.Msg != wantMsg {
				t.Fatalf("%q: got %v, want code %d %q", b, err, wantCode, wantMsg)
			}
			return
		}
		if wantCode != 0 {
			t.Fatalf("%q accepted, want code %d %q", b, wantCode, wantMsg)
		}
		if conf.IPAM.Type != PluginType || timeout <= 0 {
			t.Fatalf("accepted %q as %+v, timeout %s", b, conf.IPAM, timeout)
		}
		if p := conf.IPAM.Pool; p != "" && (len(p) > 253 || !dnsSubdomain.MatchString(p)) {
			t.Fatalf("accepted pool %q", p)
		}
		if conf.IPAM.Socket != raw.IPAM.Socket {
			t.Fatalf("socket %q from %q", conf.IPAM.Socket, raw.IPAM.Socket)
		}
		if want, _ := time.ParseDuration(raw.IPAM.Timeout); raw.IPAM.Timeout == "" && timeout != shim.DefaultTimeout || raw.IPAM.Timeout != "" && timeout != want {
			t.Fatalf("timeout %s from %q", timeout, raw.IPAM.Timeout)
		}
		// Re-parsing is stable.
		out, err := json.Marshal(plain(conf))
		if err != nil {
			t.Fatalf("re-encode %+v: %v", conf, err)
		}
		again, timeout2, err := ParseConfig(out)
		if err != nil {
			t.Fatalf("%s (from %q) does not parse again: %v", out, b, err)
		}
		if again.IPAM != conf.IPAM || again.Name != conf.Name || again.CNIVersion != conf.CNIVersion || timeout2 != timeout ||
			!slices.Equal(again.ValidAttachments, conf.ValidAttachments) && len(again.ValidAttachments)+len(conf.ValidAttachments) > 0 {
			t.Fatalf("parsed again differently:\n%+v %s\n%+v %s", conf, timeout, again, timeout2)
		}
		// One round trip normalises (an empty list or dns section is
		// dropped); after it, encoding and parsing are a fixpoint.
		out2, err := json.Marshal(plain(again))
		if err != nil {
			t.Fatal(err)
		}
		third, _, err := ParseConfig(out2)
		if err != nil {
			t.Fatalf("%s does not parse again: %v", out2, err)
		}
		if out3, err := json.Marshal(plain(third)); err != nil || !bytes.Equal(out2, out3) {
			t.Fatalf("re-encoding is not a fixpoint:\n%s\n%s (%v)", out2, out3, err)
		}
	})
}

// FuzzParseArgs: any CNI_ARGS either fails with code 4 and "CNI_ARGS cannot
// be parsed", or gives the pod the string says: each field the last value
// of its key (as the CNI library reads "K=V;K=V"), empty if absent. The pod
// written back as CNI_ARGS parses to itself.
func FuzzParseArgs(f *testing.F) {
	f.Add(podArgs)
	f.Add("K8S_POD_NAME=a=b")
	f.Add(";;;")
	f.Fuzz(func(t *testing.T, s string) {
		pod, err := ParseArgs(s)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code != types.ErrInvalidEnvironmentVariables || e.Msg != "CNI_ARGS cannot be parsed" || e.Details == "" {
				t.Fatalf("error %v is not an invalid-environment CNI error", err)
			}
			return
		}
		if s == "" {
			if pod != (wire.Pod{}) {
				t.Fatalf("empty CNI_ARGS gave %+v", pod)
			}
			return
		}
		want := map[string]string{}
		for _, pair := range strings.Split(s, ";") {
			k, v, ok := strings.Cut(pair, "=")
			if !ok || strings.Contains(v, "=") {
				t.Fatalf("%q accepted with the malformed pair %q", s, pair)
			}
			want[k] = v
		}
		if got := (wire.Pod{Namespace: want["K8S_POD_NAMESPACE"], Name: want["K8S_POD_NAME"], UID: want["K8S_POD_UID"]}); pod != got {
			t.Fatalf("%q gave %+v, want %+v", s, pod, got)
		}
		back := fmt.Sprintf("K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=%s", pod.Namespace, pod.Name, pod.UID)
		if again, err := ParseArgs(back); err != nil || again != pod {
			t.Fatalf("%q (from %q) parsed to %+v, %v; want %+v", back, s, again, err, pod)
		}
	})
}
