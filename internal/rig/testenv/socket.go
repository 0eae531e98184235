package testenv

import (
	"net"
	"path/filepath"
	"testing"
)

// UnixServer listens on a unix socket in a temporary directory and serves
// each connection in turn with handle (then closes it), until the test
// ends. It returns the socket's path. Tests of the plugin's side of the
// agent's socket use it as an agent that misbehaves as they need.
func UnixServer(t testing.TB, handle func(*net.UnixConn)) string {
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
			handle(c.(*net.UnixConn))
			c.Close()
		}
	}()
	return sock
}

// DeadSocket returns the path of a socket file that nobody listens on, as
// a crashed agent leaves it.
func DeadSocket(t testing.TB) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "dead.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	return sock
}
