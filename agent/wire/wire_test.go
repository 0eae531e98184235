package wire

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"reflect"
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

// TestReadBoundary: a line of exactly MaxMessage bytes is read, one byte
// more is refused, a "\r\n" ending is a line end, and Read takes one line
// only, leaving the next for the next Read.
func TestReadBoundary(t *testing.T) {
	msg := `{"v":1,"op":"DEL","containerID":"c","ifName":"eth0","pod":{"namespace":"a","name":"b"}}`
	pad := func(n int) string { return strings.Repeat(" ", n-len(msg)) + msg }
	req := &Request{}
	if err := Read(bufio.NewReader(strings.NewReader(pad(MaxMessage)+"\n")), req); err != nil || req.Op != OpDel {
		t.Fatalf("a line of MaxMessage bytes: %v (%+v)", err, req)
	}
	if err := Read(bufio.NewReader(strings.NewReader(pad(MaxMessage+1)+"\n")), &Request{}); err == nil || err.Error() != "message longer than 1048576 bytes" {
		t.Fatalf("a line of MaxMessage+1 bytes: %v", err)
	}
	r := bufio.NewReader(strings.NewReader(msg + "\r\n" + `{"v":1,"op":"STATUS","pod":{"namespace":"","name":""}}` + "\n"))
	first, second := &Request{}, &Request{}
	if err := Read(r, first); err != nil || first.Op != OpDel {
		t.Fatalf("first of two lines: %v %+v", err, first)
	}
	if err := Read(r, second); err != nil || second.Op != OpStatus {
		t.Fatalf("second of two lines: %v %+v", err, second)
	}
	if err := Read(r, &Request{}); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last line: %v, want EOF", err)
	}
}

// firstLine is the line Read reads from b: up to the first "\n", without
// it and a "\r" before it; all of b when there is no "\n". ok is false for
// empty input (EOF before any line).
func firstLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return b, nil, len(b) > 0
	}
	return bytes.TrimSuffix(b[:i], []byte("\r")), b[i+1:], true
}

// canonical drops what one encode/decode round trip legitimately changes:
// empty lists under omitempty become absent.
func canonical(v any) any {
	switch m := v.(type) {
	case *Request:
		c := *m
		if len(c.Valid) == 0 {
			c.Valid = nil
		}
		return &c
	case *Response:
		c := *m
		if c.Result != nil {
			r := *c.Result
			if len(r.Routes) == 0 {
				r.Routes = nil
			}
			c.Result = &r
		}
		return &c
	}
	panic(fmt.Sprintf("canonical: %T", v))
}

// FuzzRead: Read is line framing plus JSON. For any bytes, as a Request
// and as a Response: Read never panics; it accepts exactly when the first
// line is at most MaxMessage bytes of JSON that decodes into the message,
// and then gives what json.Unmarshal of that line gives and leaves the
// rest of the input unread. What it accepts re-encodes (Write) and reads
// back equal, and the encoding is then a fixpoint. The same message padded
// past MaxMessage is refused.
func FuzzRead(f *testing.F) {
	f.Add([]byte(`{"v":1,"op":"ADD","containerID":"c","ifName":"eth0","pod":{"namespace":"a","name":"b"}}` + "\n"))
	f.Add([]byte(`{"v":1,"op":"GC","valid":[{"containerID":"c","ifName":"eth0"}]}` + "\n"))
	f.Add([]byte("\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, fresh := range []func() any{func() any { return &Request{} }, func() any { return &Response{} }} {
			msg := fresh()
			r := bufio.NewReader(bytes.NewReader(b))
			err := Read(r, msg)
			line, rest, ok := firstLine(b)
			want := fresh()
			var wantErr error
			switch {
			case !ok:
				wantErr = io.EOF
			case len(line) > MaxMessage:
				wantErr = fmt.Errorf("message longer than %d bytes", MaxMessage)
			default:
				wantErr = json.Unmarshal(line, want)
			}
			if (err == nil) != (wantErr == nil) {
				t.Fatalf("%T from %q: Read says %v, the line %q says %v", msg, b, err, line, wantErr)
			}
			if err != nil {
				continue
			}
			if !reflect.DeepEqual(msg, want) {
				t.Fatalf("%T from %q: Read gave %+v, json.Unmarshal of the line %+v", msg, b, msg, want)
			}
			if left, _ := io.ReadAll(r); !bytes.Equal(left, rest) {
				t.Fatalf("%T from %q: Read left %q unread, want %q", msg, b, left, rest)
			}

			// Round trip through the writer's encoding.
			var buf bytes.Buffer
			if err := Write(pipeConn{&buf}, msg); err != nil {
				t.Fatalf("re-encode %+v: %v", msg, err)
			}
			enc := bytes.Clone(buf.Bytes())
			if bytes.Count(enc, []byte("\n")) != 1 || enc[len(enc)-1] != '\n' {
				t.Fatalf("Write did not write one line: %q", enc)
			}
			again := fresh()
			if err := Read(bufio.NewReader(bytes.NewReader(enc)), again); err != nil {
				t.Fatalf("decode of our own encoding %s: %v", enc, err)
			}
			if !reflect.DeepEqual(canonical(again), canonical(msg)) {
				t.Fatalf("round trip changed %T:\n%+v\n%+v", msg, msg, again)
			}
			buf.Reset()
			if err := Write(pipeConn{&buf}, again); err != nil || !bytes.Equal(buf.Bytes(), enc) {
				t.Fatalf("round trip is not stable: %s then %s (%v)", enc, buf.Bytes(), err)
			}

			// Oversized: the same line behind enough whitespace to pass
			// MaxMessage (still valid JSON) is refused before decoding.
			if len(line) < 4096 {
				padded := append(bytes.Repeat([]byte(" "), MaxMessage+1-len(line)), b...)
				if err := Read(bufio.NewReader(bytes.NewReader(padded)), fresh()); err == nil || err.Error() != wantErrTooLong {
					t.Fatalf("%T from %q padded to %d bytes: %v, want refused", msg, b, MaxMessage+1, err)
				}
			}
		}
	})
}

const wantErrTooLong = "message longer than 1048576 bytes"

// pipeConn is a net.Conn that only writes, into a buffer: Write's target.
type pipeConn struct{ w *bytes.Buffer }

func (c pipeConn) Write(p []byte) (int, error)    { return c.w.Write(p) }
func (pipeConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (pipeConn) Close() error                     { return nil }
func (pipeConn) LocalAddr() net.Addr              { return nil }
func (pipeConn) RemoteAddr() net.Addr             { return nil }
func (pipeConn) SetDeadline(time.Time) error      { return nil }
func (pipeConn) SetReadDeadline(time.Time) error  { return nil }
func (pipeConn) SetWriteDeadline(time.Time) error { return nil }
