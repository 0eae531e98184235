package cni

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/warmpool/warmpool/agent/wire"
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
				"ADD": (*Plugin).Add, "DEL": (*Plugin).Del, "CHECK": (*Plugin).Check, "GC": (*Plugin).GC, "STATUS": (*Plugin).Status,
			} {
				f := &fakeAgent{answer: func(*wire.Request) (*wire.Response, error) { t.Fatalf("%s: agent called", op); return nil, nil }}
				wantCNIError(t, run(&Plugin{Call: f.call}, args(tc.conf)), tc.code, tc.msg, tc.details)
			}
		})
	}
	conf, timeout, err := ParseConfig([]byte(`{"name":"n","ipam":{"type":"warmpool"}}`))
	if err != nil || conf.IPAM.Socket != wire.DefaultSocket || timeout != DefaultTimeout {
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
			for op, run := range map[string]func(*Plugin, *skel.CmdArgs) error{"ADD": (*Plugin).Add, "DEL": (*Plugin).Del, "CHECK": (*Plugin).Check} {
				f := &fakeAgent{answer: func(*wire.Request) (*wire.Response, error) { t.Fatalf("%s: agent called", op); return nil, nil }}
				a := args(goodConf)
				a.Args = bad
				wantCNIError(t, run(&Plugin{Call: f.call}, a), types.ErrInvalidEnvironmentVariables, "CNI_ARGS cannot be parsed", "ARGS: *")
			}
		})
	}
}

// fakeAgent answers from a function, recording requests.
type fakeAgent struct {
	reqs   []*wire.Request
	answer func(*wire.Request) (*wire.Response, error)
}

func (f *fakeAgent) call(_ context.Context, _ string, req *wire.Request) (*wire.Response, error) {
	f.reqs = append(f.reqs, req)
	return f.answer(req)
}

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
			f := &fakeAgent{answer: func(*wire.Request) (*wire.Response, error) { t.Fatal("agent called"); return nil, nil }}
			a := args(goodConf)
			a.Args = cniArgs
			wantCNIError(t, (&Plugin{Call: f.call}).Add(a), types.ErrInvalidEnvironmentVariables,
				"CNI_ARGS lacks K8S_POD_NAMESPACE or K8S_POD_NAME", "warmpool allocates per Kubernetes pod: the runtime (kubelet) must pass them")
		})
	}
	// DEL and CHECK do not need the pod: the attachment identifies the assignment.
	f := &fakeAgent{answer: func(*wire.Request) (*wire.Response, error) { return &wire.Response{V: wire.Version}, nil }}
	a := args(goodConf)
	a.Args = ""
	if err := (&Plugin{Call: f.call}).Del(a); err != nil {
		t.Fatalf("DEL without pod args: %v", err)
	}
	if err := (&Plugin{Call: f.call}).Check(a); err != nil {
		t.Fatalf("CHECK without pod args: %v", err)
	}
}

// TestAgentErrorsBecomeCNIErrors: every way a call to the agent can fail,
// as Caller reports it, and every error the agent answers, reaches the
// runtime as a CNI error with its exact code, message and details.
func TestAgentErrorsBecomeCNIErrors(t *testing.T) {
	const sock = "/tmp/none.sock" // goodConf's
	unreachable := fmt.Errorf("%w: boom", wire.ErrAgentUnreachable)
	notRunning := "the warmpool agent is not running on this node (no socket at " + sock + ")"
	notRunningDetails := "check the warmpool-agent DaemonSet's pod on this node; the runtime retries"
	closed := func(op string) string {
		return "the warmpool agent closed the connection before answering " + op + " (restarting?)"
	}
	closedDetails := "the runtime retries; an ADD retried for the same container gets what the agent recorded"
	agentSays := func(code uint, msg, details string) *wire.Response {
		return &wire.Response{V: wire.Version, Error: &wire.Error{Code: code, Msg: msg, Details: details}}
	}
	for _, tc := range []struct {
		name         string
		op           func(*Plugin, *skel.CmdArgs) error
		err          error
		resp         *wire.Response
		code         uint
		msg, details string
	}{
		// No agent on the socket: try again later, but STATUS says "not available".
		{"add unreachable", (*Plugin).Add, unreachable, nil, types.ErrTryAgainLater, notRunning, notRunningDetails},
		{"del unreachable", (*Plugin).Del, unreachable, nil, types.ErrTryAgainLater, notRunning, notRunningDetails},
		{"check unreachable", (*Plugin).Check, unreachable, nil, types.ErrTryAgainLater, notRunning, notRunningDetails},
		{"gc unreachable", (*Plugin).GC, unreachable, nil, types.ErrTryAgainLater, notRunning, notRunningDetails},
		{"status unreachable", (*Plugin).Status, unreachable, nil, types.ErrPluginNotAvailable, notRunning, notRunningDetails},
		// The agent went away mid-request (restarting).
		{"agent died mid-ADD", (*Plugin).Add, fmt.Errorf("read: %w", io.EOF), nil, types.ErrTryAgainLater, closed("ADD"), closedDetails},
		{"connection reset mid-DEL", (*Plugin).Del, fmt.Errorf("read: %w", syscall.ECONNRESET), nil, types.ErrTryAgainLater, closed("DEL"), closedDetails},
		{"broken pipe mid-CHECK", (*Plugin).Check, fmt.Errorf("write: %w", syscall.EPIPE), nil, types.ErrTryAgainLater, closed("CHECK"), closedDetails},
		// No answer within ipam.timeout (goodConf's 2s).
		{"add timeout", (*Plugin).Add, fmt.Errorf("x: %w", context.DeadlineExceeded), nil, types.ErrTryAgainLater, "the warmpool agent did not answer ADD within 2s", "x: context deadline exceeded"},
		{"status timeout", (*Plugin).Status, fmt.Errorf("x: %w", context.DeadlineExceeded), nil, types.ErrTryAgainLater, "the warmpool agent did not answer STATUS within 2s", "x: context deadline exceeded"},
		// Anything else on the socket (garbage, a protocol version mismatch) is an I/O failure.
		{"add io", (*Plugin).Add, errors.New("garbled"), nil, types.ErrIOFailure, "talking to the warmpool agent at " + sock + " failed", "garbled"},
		// The agent's own errors pass through unchanged.
		{"add unknown pool", (*Plugin).Add, nil, agentSays(wire.CodeUnknownPool, `pool "nope" does not exist`, "create it"), wire.CodeUnknownPool, `pool "nope" does not exist`, "create it"},
		{"add no pool", (*Plugin).Add, nil, agentSays(wire.CodeNoPool, "no pool for pod default/web-0", "name one"), wire.CodeNoPool, "no pool for pod default/web-0", "name one"},
		{"add exhausted", (*Plugin).Add, nil, agentSays(wire.CodePoolExhausted, "pool underlay-dual is exhausted", ""), wire.CodePoolExhausted, "pool underlay-dual is exhausted", ""},
		{"add pod not found", (*Plugin).Add, nil, agentSays(wire.CodePodNotFound, "pod default/web-0 is not in the API", "deleted?"), wire.CodePodNotFound, "pod default/web-0 is not in the API", "deleted?"},
		{"add miss timeout", (*Plugin).Add, nil, agentSays(wire.CodeMissTimeout, "node n holds no warm address of pool p", "later"), wire.CodeMissTimeout, "node n holds no warm address of pool p", "later"},
		{"add version refused by the agent", (*Plugin).Add, nil, agentSays(wire.CodeIncompatible, "the plugin speaks protocol v0, this agent v1", "upgrade"), wire.CodeIncompatible, "the plugin speaks protocol v0, this agent v1", "upgrade"},
		{"check mismatch", (*Plugin).Check, nil, agentSays(wire.CodeCheckMismatch, "c1/eth0 holds no address", "re-create"), wire.CodeCheckMismatch, "c1/eth0 holds no address", "re-create"},
		{"del store failure", (*Plugin).Del, nil, agentSays(wire.CodeIOFailure, "the agent could not record the release", "disk"), wire.CodeIOFailure, "the agent could not record the release", "disk"},
		{"gc failure", (*Plugin).GC, nil, agentSays(wire.CodeInvalidEnv, "CNI_CONTAINERID and CNI_IFNAME are required", ""), wire.CodeInvalidEnv, "CNI_CONTAINERID and CNI_IFNAME are required", ""},
		{"status not available", (*Plugin).Status, nil, agentSays(wire.CodeNotAvailable, "node n holds no warm address of any pool and no allocator is connected", ""), wire.CodeNotAvailable, "node n holds no warm address of any pool and no allocator is connected", ""},
		// An ADD answer the plugin cannot use.
		{"add no result", (*Plugin).Add, nil, &wire.Response{V: wire.Version}, types.ErrInternal, "the warmpool agent answered ADD without a result", ""},
		{"add bad address", (*Plugin).Add, nil, &wire.Response{V: wire.Version, Result: &wire.Result{IPs: []wire.Address{{CIDR: "nonsense"}}}},
			types.ErrInternal, "the warmpool agent answered ADD with a malformed result", `address "nonsense": *`},
		{"add bad gateway", (*Plugin).Add, nil, &wire.Response{V: wire.Version, Result: &wire.Result{IPs: []wire.Address{{CIDR: "10.0.0.5/24", Gateway: "10.0.0"}}}},
			types.ErrInternal, "the warmpool agent answered ADD with a malformed result", `gateway "10.0.0" is not an address`},
		{"add bad route", (*Plugin).Add, nil, &wire.Response{V: wire.Version, Result: &wire.Result{IPs: []wire.Address{{CIDR: "10.0.0.5/24"}}, Routes: []wire.Route{{Dst: "default"}}}},
			types.ErrInternal, "the warmpool agent answered ADD with a malformed result", `route "default": *`},
		{"add bad route gateway", (*Plugin).Add, nil, &wire.Response{V: wire.Version, Result: &wire.Result{IPs: []wire.Address{{CIDR: "10.0.0.5/24"}}, Routes: []wire.Route{{Dst: "0.0.0.0/0", GW: "x"}}}},
			types.ErrInternal, "the warmpool agent answered ADD with a malformed result", `route gateway "x" is not an address`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeAgent{answer: func(*wire.Request) (*wire.Response, error) { return tc.resp, tc.err }}
			wantCNIError(t, tc.op(&Plugin{Call: f.call}, args(goodConf)), tc.code, tc.msg, tc.details)
		})
	}
}

// badAgent serves a unix socket with handle, one connection at a time.
func badAgent(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			handle(c)
			c.Close()
		}
	}()
	return sock
}

// TestAgentFailuresOverTheSocket: the production Caller (wire.Call) on a
// real unix socket, against agents that are absent, dead, silent, confused
// or of another protocol version; what the runtime gets for each.
func TestAgentFailuresOverTheSocket(t *testing.T) {
	readReq := func(c net.Conn) { _ = wire.Read(bufio.NewReader(c), &wire.Request{}) }
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	dead := filepath.Join(t.TempDir(), "dead.sock")
	l, err := net.Listen("unix", dead)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	for _, tc := range []struct {
		name         string
		socket       func() string
		op           func(*Plugin, *skel.CmdArgs) error
		code         uint
		msg, details string // "%s" in msg is the socket
	}{
		{"no socket, ADD", func() string { return filepath.Join(t.TempDir(), "absent.sock") }, (*Plugin).Add,
			types.ErrTryAgainLater, "the warmpool agent is not running on this node (no socket at %s)", "check the warmpool-agent DaemonSet's pod on this node; the runtime retries"},
		{"no socket, DEL", func() string { return filepath.Join(t.TempDir(), "absent.sock") }, (*Plugin).Del,
			types.ErrTryAgainLater, "the warmpool agent is not running on this node (no socket at %s)", "check the warmpool-agent DaemonSet's pod on this node; the runtime retries"},
		{"no socket, STATUS", func() string { return filepath.Join(t.TempDir(), "absent.sock") }, (*Plugin).Status,
			types.ErrPluginNotAvailable, "the warmpool agent is not running on this node (no socket at %s)", "check the warmpool-agent DaemonSet's pod on this node; the runtime retries"},
		{"dead agent (socket file, nobody listening)", func() string { return dead }, (*Plugin).Add,
			types.ErrTryAgainLater, "the warmpool agent is not running on this node (no socket at %s)", "check the warmpool-agent DaemonSet's pod on this node; the runtime retries"},
		{"agent closes after reading", func() string { return badAgent(t, readReq) }, (*Plugin).Add,
			types.ErrTryAgainLater, "the warmpool agent closed the connection before answering ADD (restarting?)", "the runtime retries; an ADD retried for the same container gets what the agent recorded"},
		{"agent closes without reading", func() string { return badAgent(t, func(net.Conn) {}) }, (*Plugin).Del,
			types.ErrTryAgainLater, "the warmpool agent closed the connection before answering DEL (restarting?)", "the runtime retries; an ADD retried for the same container gets what the agent recorded"},
		{"agent answers garbage", func() string { return badAgent(t, func(c net.Conn) { readReq(c); _, _ = c.Write([]byte("ok\n")) }) }, (*Plugin).Add,
			types.ErrIOFailure, "talking to the warmpool agent at %s failed", "read warmpool agent's answer to ADD: decode: *"},
		{"agent breaks off mid-answer", func() string {
			return badAgent(t, func(c net.Conn) { readReq(c); _, _ = c.Write([]byte(`{"v":1,"res`)) })
		}, (*Plugin).Add,
			types.ErrIOFailure, "talking to the warmpool agent at %s failed", "read warmpool agent's answer to ADD: decode: *"},
		{"agent answers too much", func() string {
			return badAgent(t, func(c net.Conn) { readReq(c); _, _ = c.Write(bytes.Repeat([]byte(" "), wire.MaxMessage+1)) })
		}, (*Plugin).Add,
			types.ErrIOFailure, "talking to the warmpool agent at %s failed", "read warmpool agent's answer to ADD: message longer than 1048576 bytes"},
		// docs/protocol.md gives code 1 for a protocol version mismatch;
		// the plugin refuses the answer before reading its error, so the
		// runtime gets 5 with the advice in the details.
		{"agent of another protocol version", func() string {
			return badAgent(t, func(c net.Conn) {
				readReq(c)
				_ = wire.Write(c, &wire.Response{V: wire.Version + 1, Error: &wire.Error{Code: wire.CodeIncompatible, Msg: "the plugin speaks protocol v1, this agent v2"}})
			})
		}, (*Plugin).Add,
			types.ErrIOFailure, "talking to the warmpool agent at %s failed", "warmpool agent speaks protocol v2, this plugin v1: upgrade them together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := tc.socket()
			// Not the timeout under test: long enough that a loaded
			// machine (1 MB over the socket under the race detector)
			// does not turn another failure into one.
			conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"underlay","ipam":{"type":"warmpool","socket":%q,"timeout":"30s"}}`, sock)
			msg := tc.msg
			if strings.Contains(msg, "%s") {
				msg = fmt.Sprintf(msg, sock)
			}
			wantCNIError(t, tc.op(&Plugin{Call: wire.Call}, args(conf)), tc.code, msg, tc.details)
		})
	}
	t.Run("silent agent", func(t *testing.T) {
		sock := badAgent(t, func(net.Conn) { <-release })
		conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"underlay","ipam":{"type":"warmpool","socket":%q,"timeout":"200ms"}}`, sock)
		wantCNIError(t, (*Plugin).Add(&Plugin{Call: wire.Call}, args(conf)), types.ErrTryAgainLater,
			"the warmpool agent did not answer ADD within 200ms", "warmpool agent did not answer ADD in time: context deadline exceeded")
	})
}

// TestRuntimeSeesEntryPointErrors runs the plugin as cmd/warmpool does,
// through skel with the CNI environment and stdin: skel's own checks of
// the environment and the config come first, with their codes.
func TestRuntimeSeesEntryPointErrors(t *testing.T) {
	absent := filepath.Join(t.TempDir(), "absent.sock")
	conf := func(version string) string {
		return fmt.Sprintf(`{"cniVersion":%q,"name":"underlay","type":"macvlan","ipam":{"type":"warmpool","socket":%q}}`, version, absent)
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
		{"no CNI_CONTAINERID", with("CNI_CONTAINERID", ""), conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "required env variables [CNI_CONTAINERID] missing", ""},
		{"no CNI_IFNAME", with("CNI_IFNAME", ""), conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "required env variables [CNI_IFNAME] missing", ""},
		{"bad CNI_CONTAINERID", with("CNI_CONTAINERID", "c 1"), conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "invalid characters in containerID", "c 1"},
		{"bad CNI_IFNAME", with("CNI_IFNAME", "eth/0"), conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "interface name contains / or : or whitespace characters", ""},
		{"unknown CNI_COMMAND", with("CNI_COMMAND", "FROB"), conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "unknown CNI_COMMAND: FROB", ""},
		{"config not JSON", good, `{"name":`, types.ErrDecodingFailure, "error unmarshall network config: unexpected end of JSON input", ""},
		{"config without a name", good, `{"cniVersion":"1.1.0","ipam":{"type":"warmpool"}}`, types.ErrInvalidNetworkConfig, "missing network name", ""},
		{"unsupported cniVersion", good, conf("0.2.0"), types.ErrIncompatibleCNIVersion, "incompatible CNI versions", "*"},
		{"CHECK below 0.4.0", with("CNI_COMMAND", "CHECK"), conf("0.3.1"), types.ErrIncompatibleCNIVersion, "config version does not allow CHECK", ""},
		// Past skel, the plugin's own errors.
		{"ipam section wrong", good, `{"cniVersion":"1.1.0","name":"underlay","ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig, `ipam.type is "host-local"; this plugin is "warmpool"`, ""},
		{"ipam not an object", good, `{"cniVersion":"1.1.0","name":"underlay","ipam":"warmpool"}`, types.ErrDecodingFailure, "the network config is not valid JSON", "*"},
		{"no pod in CNI_ARGS", with("CNI_ARGS", "IgnoreUnknown=1"), conf("1.1.0"), types.ErrInvalidEnvironmentVariables,
			"CNI_ARGS lacks K8S_POD_NAMESPACE or K8S_POD_NAME", "warmpool allocates per Kubernetes pod: the runtime (kubelet) must pass them"},
		{"no agent", good, conf("1.1.0"), types.ErrTryAgainLater, "the warmpool agent is not running on this node (no socket at " + absent + ")",
			"check the warmpool-agent DaemonSet's pod on this node; the runtime retries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH", "CNI_NETNS_OVERRIDE"} {
				t.Setenv(k, tc.env[k])
			}
			stdin := filepath.Join(t.TempDir(), "stdin")
			if err := os.WriteFile(stdin, []byte(tc.stdin), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(stdin)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			saved := os.Stdin
			os.Stdin = f
			defer func() { os.Stdin = saved }()
			p := &Plugin{Call: wire.Call}
			e := skel.PluginMainFuncsWithError(p.Funcs(), Versions, "")
			if e == nil {
				t.Fatal("succeeded")
			}
			wantCNIError(t, e, tc.code, tc.msg, tc.details)
		})
	}
}

func TestRequestsCarryTheAttachment(t *testing.T) {
	f := &fakeAgent{answer: func(*wire.Request) (*wire.Response, error) { return &wire.Response{}, nil }}
	p := &Plugin{Call: f.call}
	if err := p.Del(args(goodConf)); err != nil {
		t.Fatal(err)
	}
	gc := `{"cniVersion":"1.1.0","name":"underlay","ipam":{"type":"warmpool"},"cni.dev/valid-attachments":[{"containerID":"c2","ifname":"eth0"}]}`
	if err := p.GC(&skel.CmdArgs{StdinData: []byte(gc)}); err != nil {
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
	f := &fakeAgent{answer: func(*wire.Request) (*wire.Response, error) { return held, nil }}
	p := &Plugin{Call: f.call}
	withPrev := func(ips ...string) string {
		var parts []string
		for _, ip := range ips {
			parts = append(parts, fmt.Sprintf(`{"address":%q}`, ip))
		}
		return `{"cniVersion":"1.1.0","name":"underlay","ipam":{"type":"warmpool"},"prevResult":{"cniVersion":"1.1.0","ips":[` + strings.Join(parts, ",") + `]}}`
	}
	if err := p.Check(args(withPrev("10.0.0.5/24", "fd00::5/64"))); err != nil {
		t.Fatalf("matching CHECK: %v", err)
	}
	err := p.Check(args(withPrev("10.0.0.6/24")))
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
// section); it never panics. What parses has type warmpool, a socket, a
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
		if conf.IPAM.Type != PluginType || conf.IPAM.Socket == "" || timeout <= 0 {
			t.Fatalf("accepted %q as %+v, timeout %s", b, conf.IPAM, timeout)
		}
		if p := conf.IPAM.Pool; p != "" && (len(p) > 253 || !dnsSubdomain.MatchString(p)) {
			t.Fatalf("accepted pool %q", p)
		}
		if raw.IPAM.Socket == "" && conf.IPAM.Socket != wire.DefaultSocket || raw.IPAM.Socket != "" && conf.IPAM.Socket != raw.IPAM.Socket {
			t.Fatalf("socket %q from %q", conf.IPAM.Socket, raw.IPAM.Socket)
		}
		if want, _ := time.ParseDuration(raw.IPAM.Timeout); raw.IPAM.Timeout == "" && timeout != DefaultTimeout || raw.IPAM.Timeout != "" && timeout != want {
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
