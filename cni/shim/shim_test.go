package shim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// cniError is what the runtime reads from a failed exec.
type cniError struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details"`
}

// run execs the plugin's code as a runtime would, with a CNI_COMMAND of
// cmd and a network config naming socket and timeout.
func run(t *testing.T, cmd, socket, timeout string, env map[string]string) (string, int) {
	t.Helper()
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"underlay","ipam":{"type":"warmpool","socket":%q,"timeout":%q}}`, socket, timeout)
	all := map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
		"CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"}
	for k, v := range env {
		all[k] = v
	}
	var out bytes.Buffer
	exit := Main(func(k string) string { return all[k] }, strings.NewReader(conf), &out, io.Discard)
	return out.String(), exit
}

func wantError(t *testing.T, out string, exit int, code uint, msg, details string) {
	t.Helper()
	if exit != 1 {
		t.Errorf("exit %d, want 1", exit)
	}
	var e cniError
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		t.Fatalf("printed %q: %v", out, err)
	}
	okDetails := e.Details == details || strings.HasSuffix(details, "*") && strings.HasPrefix(e.Details, strings.TrimSuffix(details, "*"))
	if e.Code != code || e.Msg != msg || !okDetails {
		t.Fatalf("got %d %q %q\nwant %d %q %q", e.Code, e.Msg, e.Details, code, msg, details)
	}
}

func readAll(c *net.UnixConn) []byte { b, _ := io.ReadAll(c); return b }

// TestForwardsAndPrints: the agent's answer is printed byte for byte with
// its exit code, and the agent got the exec as the runtime made it.
func TestForwardsAndPrints(t *testing.T) {
	got := make(chan *wire.Invocation, 1)
	sock := testenv.UnixServer(t, func(c *net.UnixConn) {
		inv, err := wire.ParseInvocation(readAll(c))
		if err != nil {
			t.Error(err)
			return
		}
		got <- inv
		_, _ = c.Write(wire.EncodeAnswer([]byte("{\n    \"code\": 102\n}"), 1))
	})
	out, exit := run(t, "ADD", sock, "", map[string]string{"CNI_NETNS_OVERRIDE": "1"})
	if out != "{\n    \"code\": 102\n}" || exit != 1 {
		t.Fatalf("printed %q, exit %d", out, exit)
	}
	inv := <-got
	if inv.Getenv("CNI_COMMAND") != "ADD" || inv.Getenv("CNI_NETNS_OVERRIDE") != "1" || inv.Getenv("CNI_ARGS") != "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0" ||
		!strings.Contains(string(inv.Stdin), `"socket":"`+sock+`"`) {
		t.Fatalf("the agent got %+v", inv)
	}
}

// TestAgentFailures: what the runtime gets when the agent is absent,
// dead, silent, confused or of another protocol version.
func TestAgentFailures(t *testing.T) {
	dead := testenv.DeadSocket(t)
	absent := func() string { return filepath.Join(t.TempDir(), "absent.sock") }
	const notRunning = "the warmpool agent is not running on this node (no socket at %s)"
	const notRunningDetails = "check the warmpool-agent DaemonSet's pod on this node; the runtime retries"
	const closedDetails = "the runtime retries; an ADD retried for the same container gets what the agent recorded"
	for _, tc := range []struct {
		name         string
		socket       func() string
		cmd          string
		code         uint
		msg, details string // "%s" in msg is the socket
	}{
		{"no socket, ADD", absent, "ADD", 11, notRunning, notRunningDetails},
		{"no socket, DEL", absent, "DEL", 11, notRunning, notRunningDetails},
		{"no socket, CHECK", absent, "CHECK", 11, notRunning, notRunningDetails},
		{"no socket, GC", absent, "GC", 11, notRunning, notRunningDetails},
		{"no socket, STATUS", absent, "STATUS", 50, notRunning, notRunningDetails},
		{"dead agent (socket file, nobody listening)", func() string { return dead }, "ADD", 11, notRunning, notRunningDetails},
		{"agent closes after reading", func() string { return testenv.UnixServer(t, func(c *net.UnixConn) { readAll(c) }) }, "ADD",
			11, "the warmpool agent closed the connection before answering ADD (restarting?)", closedDetails},
		{"agent closes without reading", func() string { return testenv.UnixServer(t, func(*net.UnixConn) {}) }, "DEL",
			11, "the warmpool agent closed the connection before answering DEL (restarting?)", closedDetails},
		{"agent answers garbage", func() string {
			return testenv.UnixServer(t, func(c *net.UnixConn) { readAll(c); _, _ = c.Write([]byte("ok\n")) })
		}, "ADD",
			5, "the warmpool agent at %s speaks another protocol", `upgrade the plugin and the agent together: the peer speaks another protocol: header "ok"`},
		{"agent of protocol v1", func() string {
			return testenv.UnixServer(t, func(c *net.UnixConn) {
				readAll(c)
				_, _ = c.Write([]byte(`{"v":1,"error":{"code":6,"msg":"the agent could not read the request"}}` + "\n"))
			})
		}, "ADD", 5, "the warmpool agent at %s speaks another protocol", `upgrade the plugin and the agent together: the peer speaks another protocol: header "{\"v\":1,*`},
		{"agent of a later version", func() string {
			return testenv.UnixServer(t, func(c *net.UnixConn) { readAll(c); _, _ = c.Write([]byte("warmpool-cni/3 0\n{}")) })
		}, "ADD",
			5, "the warmpool agent at %s speaks another protocol", `upgrade the plugin and the agent together: the peer speaks another protocol: version "3", this side speaks 2`},
		{"agent breaks off in the header", func() string {
			return testenv.UnixServer(t, func(c *net.UnixConn) { readAll(c); _, _ = c.Write([]byte("warmpool-cni/2")) })
		}, "ADD",
			5, "talking to the warmpool agent at %s failed", `the message ends in its header line "warmpool-cni/2"`},
		{"agent answers too much", func() string {
			return testenv.UnixServer(t, func(c *net.UnixConn) { readAll(c); _, _ = c.Write(bytes.Repeat([]byte(" "), wire.MaxMessage+1)) })
		}, "ADD", 5, "talking to the warmpool agent at %s failed", "answer longer than 1048576 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := tc.socket()
			out, exit := run(t, tc.cmd, sock, "30s", nil)
			msg := tc.msg
			if strings.Contains(msg, "%s") {
				msg = fmt.Sprintf(msg, sock)
			}
			wantError(t, out, exit, tc.code, msg, tc.details)
		})
	}
	t.Run("silent agent", func(t *testing.T) {
		release := make(chan struct{})
		t.Cleanup(func() { close(release) })
		sock := testenv.UnixServer(t, func(*net.UnixConn) { <-release })
		start := time.Now()
		out, exit := run(t, "ADD", sock, "200ms", nil)
		wantError(t, out, exit, 11, "the warmpool agent did not answer ADD within 2.2s", "no answer in time")
		if waited := time.Since(start); waited < 2200*time.Millisecond {
			t.Errorf("gave up after %s", waited)
		}
	})
	t.Run("a newline in CNI_ARGS", func(t *testing.T) {
		out, exit := run(t, "ADD", absent(), "", map[string]string{"CNI_ARGS": "K8S_POD_NAME=a\nK8S_POD_NAMESPACE=b"})
		wantError(t, out, exit, 4, "the exec cannot be sent to the agent: CNI_ARGS contains a newline", "")
	})
}

func TestRunByHand(t *testing.T) {
	var out, errOut bytes.Buffer
	if exit := Main(func(string) string { return "" }, strings.NewReader(""), &out, &errOut); exit != 0 || out.Len() != 0 ||
		errOut.String() != About+"\nCNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", exit, out.String(), errOut.String())
	}
}

// TestWhere: the socket and the timeout from the config, their defaults
// when it does not give them or cannot be read (the agent then says what
// is wrong with it).
func TestWhere(t *testing.T) {
	for _, tc := range []struct {
		conf    string
		socket  string
		timeout time.Duration
	}{
		{`{"ipam":{"socket":"/run/x.sock","timeout":"3s"}}`, "/run/x.sock", 3 * time.Second},
		{`{"ipam":{"type":"warmpool"}}`, wire.DefaultSocket, DefaultTimeout},
		{`{"ipam":{"timeout":"soon"}}`, wire.DefaultSocket, DefaultTimeout},
		{`{"ipam":{"timeout":"-1s"}}`, wire.DefaultSocket, DefaultTimeout},
		{`{"ipam":"warmpool"}`, wire.DefaultSocket, DefaultTimeout},
		{`{"ipam":`, wire.DefaultSocket, DefaultTimeout},
		{``, wire.DefaultSocket, DefaultTimeout},
	} {
		if socket, timeout := where([]byte(tc.conf)); socket != tc.socket || timeout != tc.timeout {
			t.Errorf("%s: %s %s, want %s %s", tc.conf, socket, timeout, tc.socket, tc.timeout)
		}
	}
}
