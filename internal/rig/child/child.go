// Package child supervises the processes the rig and the benchmark run
// from real binaries (etcd, the Kubernetes components, warmpool's own):
// each in its own process group with its output in a log file, killed if
// the parent dies, stopped with SIGTERM then SIGKILL.
package child

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Process is one child. Its output goes to a log file so a failure can
// quote the tail of it.
type Process struct {
	// Name names it in errors and is its log file's name.
	Name    string
	cmd     *exec.Cmd
	LogPath string
	done    chan struct{} // closed when the process has exited
	err     error         // exit status, valid once done is closed
}

// Start runs bin with args, its output in logDir/<name>.log.
func Start(name, logDir, bin string, args ...string) (*Process, error) {
	return StartEnv(name, logDir, nil, bin, args...)
}

// StartEnv is Start with env ("K=V") added to the environment the child
// inherits.
func StartEnv(name, logDir string, env []string, bin string, args ...string) (*Process, error) {
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s: log file: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Own process group, so a stop reaches anything the component forks, and
	// a parent death signal, so a test binary killed by `go test -timeout`
	// leaves no orphaned control plane behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := spawn(cmd); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("%s: start %s: %w", name, bin, err)
	}
	p := &Process{Name: name, cmd: cmd, LogPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM to the process group, then SIGKILL after grace. It
// returns once the process has been reaped.
func (p *Process) Stop(grace time.Duration) {
	if p.Exited() {
		return
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	// Whatever the component forked and left behind goes too.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// Tail returns the last n bytes of the process log, for error messages.
func (p *Process) Tail(n int) string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// ExitError describes a component that died while we waited for it.
func (p *Process) ExitError() error {
	return fmt.Errorf("%s exited (%v); log %s ends with:\n%s", p.Name, p.err, p.LogPath, p.Tail(4000))
}

// WaitReady polls check until it succeeds, the process dies, or ctx ends.
func (p *Process) WaitReady(ctx context.Context, check func(context.Context) error) error {
	var last error
	for {
		if p.Exited() {
			return p.ExitError()
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		last = check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last check: %v); log %s ends with:\n%s", p.Name, ctx.Err(), last, p.LogPath, p.Tail(4000))
		case <-p.done:
			return p.ExitError()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// spawnReq asks the spawner to start a command.
type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

var (
	spawnOnce sync.Once
	spawnCh   chan spawnReq
)

// spawn starts cmd from one goroutine locked to its OS thread for the life
// of the process. Pdeathsig fires when the thread that forked the child
// exits, not the process (golang/go#27505), and the Go runtime ends a
// thread whenever a goroutine locked to it returns, which network-namespace
// code does: forking from a thread that never exits makes the signal mean
// "the test process died", as intended.
func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnCh = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for req := range spawnCh {
				req.done <- req.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawnCh <- spawnReq{cmd, done}
	return <-done
}

// FreePorts reserves n distinct loopback ports by listening on port 0, then
// releases them for the components to bind. Another process could take one
// in between: a caller that can tell (controlplane) retries.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("reserve port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// FreeAddr reserves one loopback port as FreePorts does and returns it as
// host:port, for a component's --metrics-addr or a test's server.
func FreeAddr() (string, error) {
	ports, err := FreePorts(1)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), nil
}

// PID is the process's id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Done is closed once the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the exit status, valid once Done is closed.
func (p *Process) Err() error { return p.err }
