package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/warmpool/warmpool/internal/rig/child"
)

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

// waitListening is WaitReady plus the check that the answer came from p:
// a port squatted by another process fails with errAddrInUse.
func waitListening(ctx context.Context, p *child.Process, port int, check func(context.Context) error) error {
	if err := p.WaitReady(ctx, check); err != nil {
		return err
	}
	own, err := listensOn(p.PID(), port)
	if err != nil {
		return fmt.Errorf("%s: check the listener on port %d: %w", p.Name, port, err)
	}
	if !own {
		return fmt.Errorf("%w: %s: port %d answers, but from another process", errAddrInUse, p.Name, port)
	}
	return nil
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

var errAddrInUse = errors.New("address already in use")
