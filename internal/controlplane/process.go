package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is one child component. Its output goes to a log file so a failure
// can quote the tail of it.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // exit status, valid once done is closed
}

func startProcess(name, logDir, bin string, args ...string) (*process, error) {
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s: log file: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
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
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after grace. It
// returns once the process has been reaped.
func (p *process) stop(grace time.Duration) {
	if p.exited() {
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

// kill sends SIGKILL at once (a crash, for fault tests) and reaps the process.
func (p *process) kill() {
	if p.exited() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// tail returns the last n bytes of the process log, for error messages.
func (p *process) tail(n int) string {
	b, err := os.ReadFile(p.logPath)
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

// exitError describes a component that died while we waited for it.
func (p *process) exitError() error {
	return fmt.Errorf("%s exited (%v); log %s ends with:\n%s", p.name, p.err, p.logPath, p.tail(4000))
}

// waitReady polls check until it succeeds, the process dies, or ctx ends.
func (p *process) waitReady(ctx context.Context, check func(context.Context) error) error {
	var last error
	for {
		if p.exited() {
			return p.exitError()
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		last = check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last check: %v); log %s ends with:\n%s", p.name, ctx.Err(), last, p.logPath, p.tail(4000))
		case <-p.done:
			return p.exitError()
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

// listensOn reports whether process pid owns a listening TCP socket on port,
// by matching the socket inodes in /proc/net/tcp{,6} with the process's file
// descriptors. A readiness probe that succeeded may have reached another
// process that took the port between reservation and bind; this tells.
func listensOn(pid, port int) (bool, error) {
	inodes := map[string]bool{}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			return false, err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			// local_address is ADDR:PORT in hex; state 0A is LISTEN; inode is field 9.
			if len(f) < 10 || f[3] != "0A" {
				continue
			}
			_, hexPort, ok := strings.Cut(f[1], ":")
			if p, err := strconv.ParseUint(hexPort, 16, 16); ok && err == nil && int(p) == port {
				inodes[f[9]] = true
			}
		}
	}
	if len(inodes) == 0 {
		return false, nil
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return false, err
	}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil {
			continue
		}
		if inode, ok := strings.CutPrefix(link, "socket:["); ok && inodes[strings.TrimSuffix(inode, "]")] {
			return true, nil
		}
	}
	return false, nil
}

// waitListening is waitReady plus the check that the answer came from this
// process: a port squatted by another process fails with errAddrInUse.
func (p *process) waitListening(ctx context.Context, port int, check func(context.Context) error) error {
	if err := p.waitReady(ctx, check); err != nil {
		return err
	}
	own, err := listensOn(p.cmd.Process.Pid, port)
	if err != nil {
		return fmt.Errorf("%s: check the listener on port %d: %w", p.name, port, err)
	}
	if !own {
		return fmt.Errorf("%w: %s: port %d answers, but from another process", errAddrInUse, p.name, port)
	}
	return nil
}

// freePorts reserves n distinct loopback ports by listening on port 0, then
// releases them for the components to bind. Another process could take one
// in between; Start retries once on a bind failure.
func freePorts(n int) ([]int, error) {
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

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

var errAddrInUse = errors.New("address already in use")
