package wire

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serve answers one connection on a unix socket with handle.
func serve(t *testing.T, handle func(net.Conn)) string {
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

func TestCallRoundTrip(t *testing.T) {
	sock := serve(t, func(c net.Conn) {
		req := &Request{}
		if err := Read(bufio.NewReader(c), req); err != nil {
			t.Errorf("server read: %v", err)
			return
		}
		_ = Write(c, &Response{V: Version, Result: &Result{Pool: req.Pool, IPs: []Address{{CIDR: "10.0.0.5/24"}}, Hit: true}})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := Call(ctx, sock, &Request{Op: OpAdd, Pool: "p1", Attachment: Attachment{ContainerID: "c", IfName: "eth0"}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Result == nil || resp.Result.Pool != "p1" || !resp.Result.Hit || resp.Result.IPs[0].CIDR != "10.0.0.5/24" {
		t.Fatalf("response %+v", resp)
	}
}

func TestCallNoAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := Call(ctx, filepath.Join(t.TempDir(), "absent.sock"), &Request{Op: OpAdd})
	if !errors.Is(err, ErrAgentUnreachable) {
		t.Fatalf("absent socket: %v, want ErrAgentUnreachable", err)
	}
	// A socket file whose listener is gone refuses connections: also unreachable.
	sock := filepath.Join(t.TempDir(), "dead.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := Call(ctx, sock, &Request{Op: OpAdd}); !errors.Is(err, ErrAgentUnreachable) {
		t.Fatalf("dead socket: %v, want ErrAgentUnreachable", err)
	}
}

func TestCallSilentAgentTimesOut(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	sock := serve(t, func(net.Conn) { <-release })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := Call(ctx, sock, &Request{Op: OpAdd})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "did not answer ADD in time") {
		t.Fatalf("silent agent: %v", err)
	}
}

func TestCallVersionMismatch(t *testing.T) {
	sock := serve(t, func(c net.Conn) {
		_ = Read(bufio.NewReader(c), &Request{})
		_ = Write(c, &Response{V: Version + 1})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := Call(ctx, sock, &Request{Op: OpAdd}); err == nil || !strings.Contains(err.Error(), "upgrade them together") {
		t.Fatalf("version mismatch: %v", err)
	}
}

func TestReadRefusesHugeAndMalformed(t *testing.T) {
	huge := strings.Repeat("x", MaxMessage+10) + "\n"
	if err := Read(bufio.NewReader(strings.NewReader(huge)), &Request{}); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("huge message: %v", err)
	}
	if err := Read(bufio.NewReader(strings.NewReader("{\"op\":\n")), &Request{}); err == nil {
		t.Fatal("malformed message accepted")
	}
}

func FuzzRead(f *testing.F) {
	f.Add([]byte(`{"v":1,"op":"ADD","containerID":"c","ifName":"eth0","pod":{"namespace":"a","name":"b"}}` + "\n"))
	f.Add([]byte(`{"v":1,"op":"GC","valid":[{"containerID":"c","ifName":"eth0"}]}` + "\n"))
	f.Add([]byte("\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		req := &Request{}
		if err := Read(bufio.NewReader(strings.NewReader(string(b))), req); err != nil {
			return
		}
		// Whatever decodes must survive an encode/decode round trip unchanged.
		b2, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", req, err)
		}
		again := &Request{}
		if err := Read(bufio.NewReader(strings.NewReader(string(b2)+"\n")), again); err != nil {
			t.Fatalf("decode of our own encoding %s: %v", b2, err)
		}
		// Decoding normalises (an empty list becomes absent, bad UTF-8 is
		// replaced), so compare encodings: one round trip must be a fixpoint.
		b3, err := json.Marshal(again)
		if err != nil || !bytes.Equal(b2, b3) {
			t.Fatalf("round trip is not stable: %s then %s (%v)", b2, b3, err)
		}
	})
}
