package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/cni/shim"
)

var badPool = store.Pool{Name: "dual", Prefix4: 24, Prefix6: 64, Gateway4: "10.0.0.1", Gateway6: "fd00::1"}

func badUnits(n int) []store.Unit {
	us := make([]store.Unit, n)
	for i := range us {
		v4 := fmt.Sprintf("10.0.0.%d", i+10)
		us[i] = store.Unit{Pool: "dual", ID: v4, IPv4: v4, IPv6: fmt.Sprintf("fd00::%x", i+0x10)}
	}
	return us
}

// badAllocator is the miss path as a test wants it.
type badAllocator struct {
	miss     func() ([]store.Unit, store.Pool, int64, error)
	canServe bool
	fenced   error
}

func (b *badAllocator) Miss(context.Context, string, int) ([]store.Unit, store.Pool, int64, error) {
	return b.miss()
}
func (b *badAllocator) CanServe(string) bool { return b.canServe }
func (b *badAllocator) Fenced() error        { return b.fenced }

// badAgent is an agent of node-1 that knows pool "dual" and holds warm
// units of it; resolver, if set, replaces the one that knows "dual".
type badAgent struct {
	agent *agent.Agent
	store *store.Store
}

func newBadAgent(t *testing.T, warm int, alloc agent.Allocator, resolver agent.PoolResolver) *badAgent {
	t.Helper()
	s, err := store.Open(filepath.Join(t.TempDir(), "agent.db"), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if resolver == nil {
		resolver = agent.StaticResolver{Known: map[string]bool{"dual": true}, Default: "dual"}
	}
	cfg := agent.Config{Node: "node-1", Store: s, Resolver: resolver, MissTimeout: 100 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)}
	if alloc != nil {
		cfg.Allocator = alloc
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if warm > 0 {
		if err := a.Grant(badPool, badUnits(warm), 0); err != nil {
			t.Fatal(err)
		}
	}
	return &badAgent{agent: a, store: s}
}

func badReq(op wire.Op, ctr string) *wire.Request {
	return &wire.Request{Op: op, Network: "underlay", Attachment: wire.Attachment{ContainerID: ctr, IfName: "eth0"},
		Pod: wire.Pod{Namespace: "default", Name: "web-0", UID: "uid-0"}}
}

// wantWireError checks an agent's answer: exactly code, msg and details
// ("*": any non-empty details, which come from the store or the
// allocator's client; a trailing "*": an exact prefix).
func wantWireError(t *testing.T, resp *wire.Response, code uint, msg, details string) {
	t.Helper()
	e := resp.Error
	if e == nil {
		t.Fatalf("no error, result %+v; want code %d %q", resp.Result, code, msg)
	}
	if e.Code != code || e.Msg != msg {
		t.Fatalf("got code %d %q (details %q)\nwant code %d %q", e.Code, e.Msg, e.Details, code, msg)
	}
	switch {
	case details == "*":
		if e.Details == "" {
			t.Fatalf("code %d %q: no details", code, msg)
		}
	case strings.HasSuffix(details, "*"):
		if !strings.HasPrefix(e.Details, strings.TrimSuffix(details, "*")) {
			t.Fatalf("code %d %q: details %q, want prefix %q", code, msg, e.Details, strings.TrimSuffix(details, "*"))
		}
	case e.Details != details:
		t.Fatalf("code %d %q: details %q, want %q", code, msg, e.Details, details)
	}
	if resp.Result != nil {
		t.Fatalf("an error and a result: %+v", resp.Result)
	}
}

// TestEveryBadRequestHasItsCodeAndMessage: each error the agent answers the
// plugin, with the exact CNI code, message and details the runtime will
// show (the plugin passes them through unchanged).
func TestEveryBadRequestHasItsCodeAndMessage(t *testing.T) {
	busy := &badAllocator{miss: func() ([]store.Unit, store.Pool, int64, error) { return nil, store.Pool{}, 0, agent.ErrBusy }, canServe: true}
	for _, tc := range []struct {
		name     string
		warm     int
		alloc    agent.Allocator
		resolver agent.PoolResolver
		// before runs on the agent first: earlier requests, a broken store.
		before       func(t *testing.T, b *badAgent)
		req          *wire.Request
		code         uint
		msg, details string
	}{
		{name: "unknown operation", req: badReq("FROB", "c1"), code: wire.CodeInvalidConfig, msg: `unknown operation "FROB"`},
		{name: "no operation", req: badReq("", "c1"), code: wire.CodeInvalidConfig, msg: `unknown operation ""`},
		{name: "ADD without container ID", warm: 1, req: badReq(wire.OpAdd, ""), code: wire.CodeInvalidEnv, msg: "CNI_CONTAINERID and CNI_IFNAME are required"},
		{name: "ADD without ifname", warm: 1, req: func() *wire.Request { r := badReq(wire.OpAdd, "c1"); r.IfName = ""; return r }(),
			code: wire.CodeInvalidEnv, msg: "CNI_CONTAINERID and CNI_IFNAME are required"},
		{name: "DEL without container ID", req: badReq(wire.OpDel, ""), code: wire.CodeInvalidEnv, msg: "CNI_CONTAINERID and CNI_IFNAME are required"},
		{name: "CHECK without ifname", req: func() *wire.Request { r := badReq(wire.OpCheck, "c1"); r.IfName = ""; return r }(),
			code: wire.CodeInvalidEnv, msg: "CNI_CONTAINERID and CNI_IFNAME are required"},
		{name: "ADD with a '/' in the ifname", warm: 1, req: func() *wire.Request { r := badReq(wire.OpAdd, "c1"); r.IfName = "eth0/"; return r }(),
			code: wire.CodeInvalidEnv, msg: "interface name contains / or : or whitespace characters"},
		{name: "DEL with a space in the container ID", req: badReq(wire.OpDel, "c 1"), code: wire.CodeInvalidEnv, msg: "invalid characters in containerID", details: "c 1"},
		{name: "unknown pool", warm: 1, req: func() *wire.Request { r := badReq(wire.OpAdd, "c1"); r.Pool = "nope"; return r }(),
			code: wire.CodeUnknownPool, msg: `pool "nope" does not exist`, details: "create the IPPool or fix ipam.pool in the network config"},
		{name: "no pool", warm: 1, resolver: agent.StaticResolver{Known: map[string]bool{"dual": true}}, req: badReq(wire.OpAdd, "c1"),
			code: wire.CodeNoPool, msg: "no pool for pod default/web-0", details: "name one in the network config's ipam.pool"},
		{name: "empty cache, no allocator", req: badReq(wire.OpAdd, "c1"),
			code: wire.CodeMissTimeout, msg: "node node-1 holds no warm address of pool dual", details: "no allocator is connected to refill it; the runtime retries"},
		{name: "pool exhausted", alloc: &badAllocator{miss: func() ([]store.Unit, store.Pool, int64, error) { return nil, store.Pool{}, 0, agent.ErrPoolExhausted }},
			req: badReq(wire.OpAdd, "c1"), code: wire.CodePoolExhausted, msg: "pool dual has no free address left", details: "free addresses or add a pool with the same selectors"},
		{name: "allocator does not answer", alloc: &badAllocator{miss: func() ([]store.Unit, store.Pool, int64, error) {
			return nil, store.Pool{}, 0, errors.New("nats: timeout")
		}},
			req: badReq(wire.OpAdd, "c1"), code: wire.CodeMissTimeout, msg: "node node-1 holds no warm address of pool dual and the allocator did not answer in 100ms", details: "nats: timeout"},
		{name: "allocator busy until the miss timeout", alloc: busy, req: badReq(wire.OpAdd, "c1"),
			code: wire.CodeMissTimeout, msg: "node node-1 holds no warm address of pool dual and the allocator found none in 100ms", details: "units are being moved from other nodes; the runtime retries"},
		{name: "warm units fenced", warm: 2, alloc: &badAllocator{fenced: errors.New("no answer from the allocator for 30s")}, req: badReq(wire.OpAdd, "c1"),
			code: wire.CodeTryAgainLater, msg: "node node-1 is not using its warm addresses of pool dual until it resynchronises with the allocator: no answer from the allocator for 30s", details: "the runtime retries"},
		{name: "grant cannot be recorded", alloc: &badAllocator{miss: func() ([]store.Unit, store.Pool, int64, error) { return badUnits(1), badPool, 1, nil }},
			before: func(t *testing.T, b *badAgent) { b.store.Close() }, req: badReq(wire.OpAdd, "c1"),
			code: wire.CodeTryAgainLater, msg: "the agent could not record the allocator's grant", details: "grant to dual: *"},
		{name: "assignment cannot be recorded", warm: 1, before: func(t *testing.T, b *badAgent) { b.store.Close() }, req: badReq(wire.OpAdd, "c1"),
			code: wire.CodeTryAgainLater, msg: "the agent could not record the assignment", details: "assign dual/10.0.0.10 to c1/eth0: *"},
		{name: "release cannot be recorded", warm: 1, before: func(t *testing.T, b *badAgent) {
			if resp := b.agent.Handle(context.Background(), badReq(wire.OpAdd, "c1")); resp.Error != nil {
				t.Fatal(resp.Error)
			}
			b.store.Close()
		}, req: badReq(wire.OpDel, "c1"), code: wire.CodeIOFailure, msg: "the agent could not record the release", details: "release c1/eth0: *"},
		{name: "GC cannot record a release", warm: 1, before: func(t *testing.T, b *badAgent) {
			if resp := b.agent.Handle(context.Background(), badReq(wire.OpAdd, "c1")); resp.Error != nil {
				t.Fatal(resp.Error)
			}
			b.store.Close()
		}, req: &wire.Request{Op: wire.OpGC, Network: "underlay", Valid: []wire.Attachment{}},
			code: wire.CodeIOFailure, msg: "the agent could not record the release", details: "release c1/eth0: *"},
		{name: "CHECK of an attachment holding nothing", warm: 1, req: badReq(wire.OpCheck, "c9"),
			code: wire.CodeCheckMismatch, msg: "c9/eth0 holds no address", details: "the runtime should delete and re-create the sandbox"},
		{name: "STATUS of a pool, nothing warm, no allocator", req: &wire.Request{Op: wire.OpStatus, Pool: "dual"},
			code: wire.CodeNotAvailable, msg: "node node-1 holds no warm address of pool dual and no allocator is connected"},
		{name: "STATUS of any pool, nothing warm, no allocator", req: &wire.Request{Op: wire.OpStatus},
			code: wire.CodeNotAvailable, msg: "node node-1 holds no warm address of any pool and no allocator is connected"},
		{name: "STATUS, nothing warm, allocator cannot serve", alloc: &badAllocator{canServe: false},
			req:  &wire.Request{Op: wire.OpStatus, Pool: "dual"},
			code: wire.CodeNotAvailable, msg: "node node-1 holds no warm address of pool dual, and the allocator is unreachable or the pool exhausted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBadAgent(t, tc.warm, tc.alloc, tc.resolver)
			if tc.before != nil {
				tc.before(t, b)
			}
			wantWireError(t, b.agent.Handle(context.Background(), tc.req), tc.code, tc.msg, tc.details)
		})
	}
}

// serveBad serves the agent on a socket in a short temporary directory
// (a unix socket path has at most 107 bytes).
func serveBad(t *testing.T, a *agent.Agent) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wp-bad-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	srv, err := agent.Listen(a, sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return sock
}

// TestUnreadableRequests: what is not a framed exec of at most
// MaxMessage bytes gets code 6 on the socket, in the framing's answer; a
// plugin of protocol v1 gets an answer it reads as "upgrade".
func TestUnreadableRequests(t *testing.T) {
	sock := serveBad(t, newBadAgent(t, 1, nil, nil).agent)
	exchange := func(t *testing.T, send string) []byte {
		t.Helper()
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		// The agent may answer and close before reading all of an
		// oversized message: a failed write is fine, the answer counts.
		_, _ = c.Write([]byte(send))
		_ = c.(*net.UnixConn).CloseWrite()
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name, send, details string
	}{
		{"not framed", "ADD please\n", "the peer speaks another protocol: header *"},
		{"another version", "warmpool-cni/3\n\n{}", `the peer speaks another protocol: version "3", this side speaks 2`},
		{"an unknown variable", "warmpool-cni/2\nPATH=/bin\n\n{}", `environment line "PATH=/bin" is not one of the CNI variables`},
		{"no end of the environment", "warmpool-cni/2\nCNI_COMMAND=ADD\n", "the environment does not end in an empty line"},
		{"longer than MaxMessage", "warmpool-cni/2\n\n" + strings.Repeat(" ", wire.MaxMessage), "message longer than 1048576 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, exit, err := wire.ParseAnswer(exchange(t, tc.send))
			if err != nil {
				t.Fatal(err)
			}
			if exit != 1 {
				t.Errorf("exit %d, want 1", exit)
			}
			wantCNIOutput(t, out, wire.CodeDecoding, "the agent could not read the request", tc.details)
		})
	}
	t.Run("a plugin of protocol v1", func(t *testing.T) {
		got := string(exchange(t, `{"v":1,"op":"ADD"}`+"\n"))
		want := `{"v":2,"error":{"code":1,"msg":"the plugin speaks protocol v1, this agent v2","details":"upgrade the plugin and the agent together"}}` + "\n"
		if got != want {
			t.Fatalf("answered %q\nwant %q", got, want)
		}
	})
}

// wantCNIOutput checks what the plugin printed: a CNI error of exactly
// code, msg and details (details as in wantWireError).
func wantCNIOutput(t *testing.T, out []byte, code uint, msg, details string) {
	t.Helper()
	e := &wire.Error{}
	if err := json.Unmarshal(out, e); err != nil {
		t.Fatalf("printed %q: %v", out, err)
	}
	wantWireError(t, &wire.Response{Error: e}, code, msg, details)
}

// runPlugin runs the plugin binary's code (cni/shim) as the runtime execs
// it, with env (CNI_PATH added) and stdin.
func runPlugin(env map[string]string, stdin []byte) ([]byte, int) {
	var out, errOut bytes.Buffer
	getenv := func(k string) string {
		if k == "CNI_PATH" {
			return "/opt/cni/bin"
		}
		return env[k]
	}
	exit := shim.Main(getenv, bytes.NewReader(stdin), &out, &errOut)
	return out.Bytes(), exit
}

// TestAgentErrorsReachTheRuntime: through the plugin's code and the real
// socket, the runtime gets the agent's code, message and details as the
// agent wrote them.
func TestAgentErrorsReachTheRuntime(t *testing.T) {
	b := newBadAgent(t, 0, nil, nil)
	sock := serveBad(t, b.agent)
	conf := func(pool string) []byte {
		return fmt.Appendf(nil, `{"cniVersion":"1.1.0","name":"underlay","ipam":{"type":"warmpool","pool":%q,"socket":%q}}`, pool, sock)
	}
	podArgs := "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=uid-0"
	exec := func(cmd, ctr string) map[string]string {
		return map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": ctr, "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0", "CNI_ARGS": podArgs}
	}
	for _, tc := range []struct {
		name         string
		env          map[string]string
		pool         string
		code         uint
		msg, details string
	}{
		{"unknown pool", exec("ADD", "c1"), "nope",
			wire.CodeUnknownPool, `pool "nope" does not exist`, "create the IPPool or fix ipam.pool in the network config"},
		{"empty cache", exec("ADD", "c1"), "dual",
			wire.CodeMissTimeout, "node node-1 holds no warm address of pool dual", "no allocator is connected to refill it; the runtime retries"},
		{"CHECK of nothing", exec("CHECK", "c1"), "dual",
			wire.CodeCheckMismatch, "c1/eth0 holds no address", "the runtime should delete and re-create the sandbox"},
		{"STATUS", map[string]string{"CNI_COMMAND": "STATUS"}, "dual",
			wire.CodeNotAvailable, "node node-1 holds no warm address of pool dual and no allocator is connected", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, exit := runPlugin(tc.env, conf(tc.pool))
			if exit != 1 {
				t.Errorf("exit %d, want 1", exit)
			}
			wantCNIOutput(t, out, tc.code, tc.msg, tc.details)
		})
	}
}
