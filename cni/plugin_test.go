package cni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/internal/testenv"
)

const goodConf = `{"cniVersion":"1.1.0","name":"underlay","type":"macvlan","ipam":{"type":"warmpool","pool":"underlay-dual","socket":"/tmp/none.sock","timeout":"2s"}}`

const podArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u-1;K8S_POD_INFRA_CONTAINER_ID=c1"

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, conf string
		code       uint
		msg        string
	}{
		{"not json", `{"ipam":`, types.ErrDecodingFailure, "not valid JSON"},
		{"other ipam", `{"name":"n","ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig, `ipam.type is "host-local"`},
		{"no ipam", `{"name":"n"}`, types.ErrInvalidNetworkConfig, `ipam.type is ""`},
		{"bad pool", `{"name":"n","ipam":{"type":"warmpool","pool":"Under_Lay"}}`, types.ErrInvalidNetworkConfig, "not a valid IPPool name"},
		{"bad timeout", `{"name":"n","ipam":{"type":"warmpool","timeout":"soon"}}`, types.ErrInvalidNetworkConfig, "not a positive duration"},
		{"negative timeout", `{"name":"n","ipam":{"type":"warmpool","timeout":"-1s"}}`, types.ErrInvalidNetworkConfig, "not a positive duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseConfig([]byte(tc.conf))
			if err == nil {
				t.Fatal("accepted")
			}
			if got := testenv.CNICode(err); got != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got code %d %q, want code %d containing %q", got, err, tc.code, tc.msg)
			}
		})
	}
	conf, timeout, err := ParseConfig([]byte(`{"name":"n","ipam":{"type":"warmpool"}}`))
	if err != nil || conf.IPAM.Socket != wire.DefaultSocket || timeout != DefaultTimeout {
		t.Fatalf("defaults: %+v %s %v", conf, timeout, err)
	}
}

func TestParseArgs(t *testing.T) {
	pod, err := ParseArgs(podArgs)
	if err != nil || pod != (wire.Pod{Namespace: "default", Name: "web-0", UID: "u-1"}) {
		t.Fatalf("got %+v, %v", pod, err)
	}
	if _, err := ParseArgs("K8S_POD_NAME"); err == nil || testenv.CNICode(err) != types.ErrInvalidEnvironmentVariables {
		t.Fatalf("malformed CNI_ARGS: %v", err)
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
	f := &fakeAgent{answer: func(*wire.Request) (*wire.Response, error) { t.Fatal("agent called"); return nil, nil }}
	p := &Plugin{Call: f.call}
	a := args(goodConf)
	a.Args = "K8S_POD_NAMESPACE=default"
	err := p.Add(a)
	if testenv.CNICode(err) != types.ErrInvalidEnvironmentVariables || !strings.Contains(err.Error(), "K8S_POD_NAME") {
		t.Fatalf("got %v", err)
	}
}

func TestAgentErrorsBecomeCNIErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		op   func(*Plugin, *skel.CmdArgs) error
		err  error
		resp *wire.Response
		code uint
		msg  string
	}{
		{"add unreachable", (*Plugin).Add, fmt.Errorf("%w: boom", wire.ErrAgentUnreachable), nil, types.ErrTryAgainLater, "not running on this node"},
		{"del unreachable", (*Plugin).Del, fmt.Errorf("%w: boom", wire.ErrAgentUnreachable), nil, types.ErrTryAgainLater, "not running on this node"},
		{"status unreachable", (*Plugin).Status, fmt.Errorf("%w: boom", wire.ErrAgentUnreachable), nil, types.ErrPluginNotAvailable, "not running on this node"},
		{"add timeout", (*Plugin).Add, fmt.Errorf("x: %w", context.DeadlineExceeded), nil, types.ErrTryAgainLater, "did not answer ADD within 2s"},
		{"add io", (*Plugin).Add, errors.New("garbled"), nil, types.ErrIOFailure, "failed"},
		{"agent died mid-ADD", (*Plugin).Add, fmt.Errorf("read: %w", io.EOF), nil, types.ErrTryAgainLater, "closed the connection before answering ADD"},
		{"add exhausted", (*Plugin).Add, nil, &wire.Response{Error: &wire.Error{Code: wire.CodePoolExhausted, Msg: "pool underlay-dual is exhausted"}}, wire.CodePoolExhausted, "exhausted"},
		{"add no result", (*Plugin).Add, nil, &wire.Response{}, types.ErrInternal, "without a result"},
		{"add bad result", (*Plugin).Add, nil, &wire.Response{Result: &wire.Result{IPs: []wire.Address{{CIDR: "nonsense"}}}}, types.ErrInternal, "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeAgent{answer: func(*wire.Request) (*wire.Response, error) { return tc.resp, tc.err }}
			err := tc.op(&Plugin{Call: f.call}, args(goodConf))
			if err == nil {
				t.Fatal("succeeded")
			}
			if got := testenv.CNICode(err); got != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got code %d %q, want %d containing %q", got, err, tc.code, tc.msg)
			}
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

// FuzzParseConfig: any input either parses or fails with a CNI error; it
// never panics, and what parses has the defaults filled in.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(goodConf))
	f.Add([]byte(`{"name":"n","ipam":{"type":"warmpool"}}`))
	f.Add([]byte(`{"name":"n","ipam":{"type":"warmpool","timeout":"1h"}}`))
	f.Add([]byte(`{"ipam":{"type":"warmpool","pool":"a.b-c"},"cni.dev/valid-attachments":[{"containerID":"c","ifname":"e"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		conf, timeout, err := ParseConfig(b)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code == 0 {
				t.Fatalf("error %v is not a CNI error with a code", err)
			}
			return
		}
		if conf.IPAM.Type != PluginType || conf.IPAM.Socket == "" || timeout <= 0 {
			t.Fatalf("accepted %q as %+v, timeout %s", b, conf.IPAM, timeout)
		}
	})
}

func FuzzParseArgs(f *testing.F) {
	f.Add(podArgs)
	f.Add("K8S_POD_NAME=a=b")
	f.Add(";;;")
	f.Fuzz(func(t *testing.T, s string) {
		if _, err := ParseArgs(s); err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code != types.ErrInvalidEnvironmentVariables {
				t.Fatalf("error %v is not an invalid-environment CNI error", err)
			}
		}
	})
}
