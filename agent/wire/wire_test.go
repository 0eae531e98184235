package wire

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/internal/rig/testenv"
)

var addEnv = map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
	"CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0", "CNI_PATH": "/opt/cni/bin"}

func getenv(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

func TestInvocationRoundTrip(t *testing.T) {
	env := maps.Clone(addEnv)
	env["HOME"] = "/root" // not a CNI variable: not forwarded
	conf := []byte("{\"cniVersion\":\"1.1.0\",\n\"name\":\"underlay\"}\n")
	msg, err := EncodeInvocation(getenv(env), conf)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := ParseInvocation(msg)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(inv.Env, addEnv) || !bytes.Equal(inv.Stdin, conf) {
		t.Fatalf("got %v %q\nwant %v %q", inv.Env, inv.Stdin, addEnv, conf)
	}
	if inv.Getenv("CNI_NETNS_OVERRIDE") != "" || (*Invocation)(nil).Getenv("CNI_COMMAND") != "" {
		t.Fatal("an unset variable reads as set")
	}
	// An exec with no stdin (VERSION) and no variables frames too.
	if inv, err := ParseInvocation(must(EncodeInvocation(getenv(nil), nil))); err != nil || len(inv.Env) != 0 || len(inv.Stdin) != 0 {
		t.Fatalf("empty exec: %+v %v", inv, err)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestEncodeInvocationRefuses(t *testing.T) {
	env := maps.Clone(addEnv)
	env["CNI_ARGS"] = "K8S_POD_NAME=a\nCNI_COMMAND=DEL"
	if _, err := EncodeInvocation(getenv(env), nil); !errors.Is(err, ErrUnframable) || !strings.Contains(err.Error(), "CNI_ARGS contains a newline") {
		t.Fatalf("newline in a variable: %v", err)
	}
	if _, err := EncodeInvocation(getenv(addEnv), make([]byte, MaxMessage)); !errors.Is(err, ErrUnframable) {
		t.Fatalf("oversized config: %v", err)
	}
}

func TestParseInvocationRefuses(t *testing.T) {
	for _, tc := range []struct{ name, msg, err string }{
		{"empty", "", `the message ends in its header line ""`},
		{"cut in the header", "warmpool-cni/", `the message ends in its header line "warmpool-cni/"`},
		{"no header line", "ADD", `the peer speaks another protocol: no header line in "ADD"`},
		{"v1's JSON", `{"v":1,"op":"ADD"}` + "\n", "the peer speaks another protocol: header"},
		{"another version", "warmpool-cni/1\n\n", `version "1", this side speaks 2`},
		{"extra in the header", "warmpool-cni/2 0\n\n", `unexpected "0" after the version`},
		{"unknown variable", "warmpool-cni/2\nCNI_FOO=1\n\n", `environment line "CNI_FOO=1" is not one of the CNI variables`},
		{"no equals sign", "warmpool-cni/2\nCNI_COMMAND\n\n", `environment line "CNI_COMMAND" is not one of the CNI variables`},
		{"twice", "warmpool-cni/2\nCNI_COMMAND=ADD\nCNI_COMMAND=DEL\n\n", "CNI_COMMAND given twice"},
		{"empty value", "warmpool-cni/2\nCNI_COMMAND=\n\n", "CNI_COMMAND given empty"},
		{"environment not ended", "warmpool-cni/2\nCNI_COMMAND=ADD\n", "the environment does not end in an empty line"},
		{"too long", "warmpool-cni/2\n\n" + strings.Repeat(" ", MaxMessage), "message longer than 1048576 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseInvocation([]byte(tc.msg)); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want %q", err, tc.err)
			}
		})
	}
}

func TestAnswerRoundTrip(t *testing.T) {
	for _, exit := range []int{0, 1, 255} {
		out, code, err := ParseAnswer(EncodeAnswer([]byte("{\n  \"ips\": []\n}"), exit))
		if err != nil || code != exit || string(out) != "{\n  \"ips\": []\n}" {
			t.Fatalf("exit %d: %q %d %v", exit, out, code, err)
		}
	}
	for _, bad := range []string{"", "ok\n", `{"v":1,"result":{}}` + "\n", "warmpool-cni/2\n", "warmpool-cni/2 x\n", "warmpool-cni/2 256\n",
		"warmpool-cni/2 -1\n", "warmpool-cni/2 01\n", "warmpool-cni/3 0\n"} {
		if _, _, err := ParseAnswer([]byte(bad)); err == nil {
			t.Errorf("answer %q accepted", bad)
		}
	}
}

func TestCallRoundTrip(t *testing.T) {
	sock := testenv.UnixServer(t, func(c *net.UnixConn) {
		msg, err := io.ReadAll(c) // until the plugin half-closes
		if err != nil {
			t.Errorf("server read: %v", err)
			return
		}
		inv, err := ParseInvocation(msg)
		if err != nil {
			t.Errorf("server parse: %v", err)
			return
		}
		_, _ = c.Write(EncodeAnswer(append([]byte(inv.Getenv("CNI_COMMAND")+" "), inv.Stdin...), 0))
	})
	// An answer larger than one read.
	conf := bytes.Repeat([]byte("x"), 100_000)
	answer, err := Call(sock, must(EncodeInvocation(getenv(addEnv), conf)), time.Now().Add(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	out, exit, err := ParseAnswer(answer)
	if err != nil || exit != 0 || !bytes.Equal(out, append([]byte("ADD "), conf...)) {
		t.Fatalf("answer of %d bytes, exit %d, %v", len(out), exit, err)
	}
}

func TestCallFailures(t *testing.T) {
	msg := must(EncodeInvocation(getenv(addEnv), []byte("{}")))
	long := time.Now().Add(10 * time.Second)
	if _, err := Call(filepath.Join(t.TempDir(), "absent.sock"), msg, long); !errors.Is(err, ErrAgentUnreachable) {
		t.Errorf("absent socket: %v, want ErrAgentUnreachable", err)
	}
	// A socket file whose listener is gone refuses connections: also unreachable.
	if _, err := Call(testenv.DeadSocket(t), msg, long); !errors.Is(err, ErrAgentUnreachable) {
		t.Errorf("dead socket: %v, want ErrAgentUnreachable", err)
	}
	closes := testenv.UnixServer(t, func(c *net.UnixConn) { _, _ = io.ReadAll(c) })
	if _, err := Call(closes, msg, long); !errors.Is(err, ErrClosed) {
		t.Errorf("agent closing without an answer: %v, want ErrClosed", err)
	}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	silent := testenv.UnixServer(t, func(*net.UnixConn) { <-release })
	start := time.Now()
	if _, err := Call(silent, msg, time.Now().Add(200*time.Millisecond)); !errors.Is(err, ErrTimeout) {
		t.Errorf("silent agent: %v, want ErrTimeout", err)
	}
	if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Errorf("gave up after %s, before the deadline", waited)
	}
	if _, err := Call(silent, msg, time.Now().Add(-time.Second)); !errors.Is(err, ErrTimeout) {
		t.Errorf("deadline passed: %v, want ErrTimeout", err)
	}
	huge := testenv.UnixServer(t, func(c *net.UnixConn) {
		_, _ = io.ReadAll(c)
		_, _ = c.Write(bytes.Repeat([]byte(" "), MaxMessage+1))
	})
	if _, err := Call(huge, msg, long); err == nil || !strings.Contains(err.Error(), "answer longer than 1048576 bytes") {
		t.Errorf("oversized answer: %v", err)
	}
}

// FuzzParseInvocation: the agent's parser of what arrives on its socket
// never panics, and what it accepts encodes back to the same message.
func FuzzParseInvocation(f *testing.F) {
	f.Add(must(EncodeInvocation(getenv(addEnv), []byte(`{"name":"n"}`))))
	f.Add([]byte("warmpool-cni/2\n\n"))
	f.Add([]byte("warmpool-cni/2\nCNI_COMMAND=ADD\nCNI_COMMAND=ADD\n\n"))
	f.Add([]byte(`{"v":1}` + "\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		inv, err := ParseInvocation(msg)
		if err != nil {
			return
		}
		again, err := EncodeInvocation(inv.Getenv, inv.Stdin)
		if err != nil {
			t.Fatalf("accepted %q, cannot encode it back: %v", msg, err)
		}
		inv2, err := ParseInvocation(again)
		if err != nil || !maps.Equal(inv.Env, inv2.Env) || !bytes.Equal(inv.Stdin, inv2.Stdin) {
			t.Fatalf("accepted %q as %+v, re-encoded as %+v (%v)", msg, inv, inv2, err)
		}
	})
}

// FuzzParseAnswer: the plugin's parser of the agent's answer never
// panics, and accepts only exit codes a process can have.
func FuzzParseAnswer(f *testing.F) {
	f.Add(EncodeAnswer([]byte(`{"ips":[]}`), 0))
	f.Add([]byte("warmpool-cni/2 1\n"))
	f.Add([]byte(`{"v":1}` + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		out, exit, err := ParseAnswer(b)
		if err != nil {
			return
		}
		if exit < 0 || exit > 255 {
			t.Fatalf("exit %d accepted", exit)
		}
		if !bytes.Equal(EncodeAnswer(out, exit), b) {
			t.Fatalf("%q does not encode back", b)
		}
	})
}
