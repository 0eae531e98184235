package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/cni"
)

// Server serves the plugin's unix socket.
type Server struct {
	agent *Agent
	l     net.Listener
	wg    sync.WaitGroup
}

// Listen creates the socket at path: its directory 0700, the socket 0600
// (only root, as the runtime runs the plugin, may ask for addresses). A
// stale socket file of a dead agent is replaced; a live one is not.
func Listen(a *Agent, path string) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s: another agent is serving it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return &Server{agent: a, l: l}, nil
}

// Serve answers connections until ctx ends or Close is called, then waits
// for the requests in flight.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.l.Close() })
	defer stop()
	backoff := 5 * time.Millisecond
	for {
		conn, err := s.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				s.wg.Wait()
				return nil
			}
			// Out of file descriptors, say: the node's pods still need
			// their addresses once it passes, so wait and accept again.
			s.agent.log.Warn("accept", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				s.wg.Wait()
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer conn.Close()
			s.serveConn(ctx, conn)
		}()
	}
}

// Close stops accepting; Serve returns once requests in flight are done.
func (s *Server) Close() error { return s.l.Close() }

func (s *Server) serveConn(ctx context.Context, conn net.Conn) {
	// A plugin that connects and says nothing must not hold a goroutine.
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	if b, err := r.Peek(1); err == nil && b[0] == '{' {
		s.refuseV1(r, conn)
		return
	}
	var out []byte
	exit := 1
	msg, err := io.ReadAll(io.LimitReader(r, wire.MaxMessage+1))
	var inv *wire.Invocation
	if err == nil {
		inv, err = wire.ParseInvocation(msg)
	}
	if err != nil {
		out, exit = cni.Refusal(wire.CodeDecoding, "the agent could not read the request", err.Error())
		// Closing with the client's bytes unread would reset the
		// connection, and the client would never read why: read them (to
		// the deadline) after answering.
		defer func() { _, _ = io.Copy(io.Discard, r) }()
	} else {
		_ = conn.SetReadDeadline(time.Time{})
		out, exit = cni.Serve(ctx, s.agent.Handle, inv)
	}
	if _, err := conn.Write(wire.EncodeAnswer(out, exit)); err != nil {
		s.agent.log.Warn("write answer", "op", inv.Getenv("CNI_COMMAND"), "attachment", inv.Getenv("CNI_CONTAINERID")+"/"+inv.Getenv("CNI_IFNAME"), "err", err)
	}
}

// refuseV1 answers a plugin of protocol v1 (a JSON line each way) in its
// own framing, so that it tells the runtime to upgrade it rather than
// waiting for an answer it cannot read.
func (s *Server) refuseV1(r *bufio.Reader, conn net.Conn) {
	_, _ = r.ReadSlice('\n')
	_, _ = conn.Write([]byte(fmt.Sprintf(`{"v":%d,"error":{"code":%d,"msg":"the plugin speaks protocol v1, this agent v%d","details":"upgrade the plugin and the agent together"}}`+"\n",
		wire.Version, wire.CodeIncompatible, wire.Version)))
}
