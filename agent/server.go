package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/internal/logkey"
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
	req := &wire.Request{}
	if err := wire.Read(bufio.NewReader(conn), req); err != nil {
		_ = wire.Write(conn, &wire.Response{V: wire.Version, Error: &wire.Error{
			Code: wire.CodeDecoding, Msg: "the agent could not read the request", Details: err.Error()}})
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	resp := s.agent.Handle(ctx, req)
	if err := wire.Write(conn, resp); err != nil {
		s.agent.log.Warn("write response", "op", req.Op, "pod", logkey.Pod(req.Pod.Namespace, req.Pod.Name), "attachment", req.Attachment.String(), "err", err)
	}
}
