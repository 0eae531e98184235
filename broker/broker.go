// Package broker owns warmpool's NATS side: the embedded nats-server that the
// allocator starts in-process by default, and the client connection every
// component opens, to that server or to an external NATS cluster by URL.
// Subjects and the message codec live here too as the protocol grows
// (docs/protocol.md).
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// ServerOptions configure the embedded server.
type ServerOptions struct {
	// Host to listen on; default 127.0.0.1.
	Host string
	// Port to listen on; 0 picks a free port.
	Port int
	// Name identifies the server in logs and monitoring; default "warmpool".
	Name string
	// ReadyTimeout bounds the wait for the listener; default 10 s.
	ReadyTimeout time.Duration
	// Logger receives the server's notices, warnings and errors; nil
	// discards them.
	Logger *slog.Logger
	// Auth, if set, authenticates every client and gives each agent the
	// permissions of its own node only (docs/security.md). Nil accepts
	// every client with every permission: for tests and benchmarks only.
	Auth *ServerAuth
	// TLS, if set, is the listener's TLS configuration (its certificate):
	// clients must connect with TLS. Server.Connect, in-process, needs
	// none.
	TLS *tls.Config
}

// Server is an embedded nats-server.
type Server struct {
	ns   *server.Server
	auth *ServerAuth
}

// ErrNotReady means the embedded server did not accept connections in time.
var ErrNotReady = errors.New("nats server not ready")

// StartServer starts an embedded nats-server and waits until it accepts
// connections.
func StartServer(opts ServerOptions) (*Server, error) {
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	port := opts.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if opts.Name == "" {
		opts.Name = "warmpool"
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 10 * time.Second
	}
	sopts := &server.Options{
		ServerName: opts.Name,
		Host:       opts.Host,
		Port:       port,
		// The embedding process owns signals; the server must not exit it.
		NoSigs: true,
	}
	if opts.Auth != nil {
		sopts.CustomClientAuthentication = opts.Auth
	}
	if opts.TLS != nil {
		sopts.TLS, sopts.TLSConfig = true, opts.TLS
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	// The server reports a failed listen only through its logger's Fatalf:
	// catch it, so a taken port fails at once and says so.
	logger := &captureLogger{next: opts.Logger, fatal: make(chan string, 1)}
	ns.SetLoggerV2(logger, false, false, false)
	ns.Start()
	deadline := time.Now().Add(opts.ReadyTimeout)
	for !ns.ReadyForConnections(50 * time.Millisecond) {
		select {
		case msg := <-logger.fatal:
			ns.Shutdown()
			return nil, fmt.Errorf("nats server on %s:%d: %s", opts.Host, opts.Port, msg)
		default:
		}
		if time.Now().After(deadline) {
			ns.Shutdown()
			return nil, fmt.Errorf("nats server on %s:%d: %w after %s", opts.Host, opts.Port, ErrNotReady, opts.ReadyTimeout)
		}
	}
	return &Server{ns: ns, auth: opts.Auth}, nil
}

// ClientURL is the URL clients connect to, e.g. nats://127.0.0.1:40321.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// Connect opens a connection to the server from its own process, through
// no socket and with the allocator's credential when the server
// authenticates its clients: every permission, no TLS needed.
func (s *Server) Connect(ctx context.Context, name string, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{nats.InProcessServer(s.ns)}
	if s.auth != nil {
		opts = append(opts, nats.UserInfo(s.auth.User, s.auth.Password))
	}
	// A tls:// URL would make the client ask for TLS, which an in-process
	// connection does without.
	url := s.ClientURL()
	if rest, ok := strings.CutPrefix(url, "tls://"); ok {
		url = "nats://" + rest
	}
	return Connect(ctx, url, name, append(opts, extra...)...)
}

// Published is the number of messages clients have published to the
// server since it started (requests and replies included): the benchmark
// counts bus messages per pod with it.
func (s *Server) Published() (uint64, error) {
	v, err := s.ns.Varz(nil)
	if err != nil {
		return 0, fmt.Errorf("nats server stats: %w", err)
	}
	return uint64(v.InMsgs), nil
}

// Shutdown stops the server and waits until it has stopped.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// Connect opens a client connection to url that reconnects forever: the
// components resynchronise their state on reconnect rather than give up.
// It fails if the first connection is not up before ctx ends.
func Connect(ctx context.Context, url, name string, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(false),
		// A refused credential is retried too: the server's review of an
		// agent's token may fail while the apiserver is away, and a
		// projected token is rotated on disk.
		nats.IgnoreAuthErrorAbort(),
	}
	if deadline, ok := ctx.Deadline(); ok {
		opts = append(opts, nats.Timeout(time.Until(deadline)))
	}
	opts = append(opts, extra...)
	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(url, opts...)
		done <- result{nc, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("connect to nats at %s: %w", url, r.err)
		}
		return r.nc, nil
	case <-ctx.Done():
		go func() {
			if r := <-done; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, fmt.Errorf("connect to nats at %s: %w", url, ctx.Err())
	}
}

// Bus is a client connection plus, when no external URL was given, the
// embedded server it is connected to.
type Bus struct {
	Conn   *nats.Conn
	server *Server // nil with an external URL
}

// Config selects the bus: an external NATS URL, or an embedded server.
type Config struct {
	// URL of an external NATS server or cluster; empty starts an embedded
	// server with Server.
	URL string
	// Server configures the embedded server.
	Server ServerOptions
	// ClientName names the connection in the server's monitoring.
	ClientName string
	// ClientOptions add to the connection's options with an external URL:
	// its credentials and TLS (ClientAuth.Options).
	ClientOptions []nats.Option
}

// Open connects to the bus that cfg names, starting the embedded server
// first when cfg.URL is empty.
func Open(ctx context.Context, cfg Config) (*Bus, error) {
	if cfg.URL == "" {
		srv, err := StartServer(cfg.Server)
		if err != nil {
			return nil, err
		}
		nc, err := srv.Connect(ctx, cfg.ClientName)
		if err != nil {
			srv.Shutdown()
			return nil, err
		}
		return &Bus{Conn: nc, server: srv}, nil
	}
	nc, err := Connect(ctx, cfg.URL, cfg.ClientName, cfg.ClientOptions...)
	if err != nil {
		return nil, err
	}
	return &Bus{Conn: nc}, nil
}

// URL is the URL other components connect to: the embedded server's, or
// the external server's with any password redacted (it is printed).
func (b *Bus) URL() string {
	if b.server != nil {
		return b.server.ClientURL()
	}
	return b.Conn.ConnectedUrlRedacted()
}

// Embedded reports whether the bus runs an in-process server.
func (b *Bus) Embedded() bool { return b.server != nil }

// Close flushes what the client has buffered (bounded by a second), closes
// the connection, then stops the embedded server if any.
func (b *Bus) Close() {
	_ = b.Conn.FlushTimeout(time.Second)
	b.Conn.Close()
	if b.server != nil {
		b.server.Shutdown()
	}
}

// captureLogger routes the server's log lines to slog (when a logger was
// given) and hands the first fatal one to StartServer.
type captureLogger struct {
	next  *slog.Logger
	fatal chan string
}

func (c *captureLogger) log(level slog.Level, format string, v ...any) {
	if c.next != nil {
		c.next.Log(context.Background(), level, fmt.Sprintf(format, v...))
	}
}

func (c *captureLogger) Noticef(format string, v ...any) { c.log(slog.LevelInfo, format, v...) }
func (c *captureLogger) Warnf(format string, v ...any)   { c.log(slog.LevelWarn, format, v...) }
func (c *captureLogger) Errorf(format string, v ...any)  { c.log(slog.LevelError, format, v...) }
func (c *captureLogger) Debugf(format string, v ...any)  { c.log(slog.LevelDebug, format, v...) }
func (c *captureLogger) Tracef(format string, v ...any)  { c.log(slog.LevelDebug, format, v...) }
func (c *captureLogger) Fatalf(format string, v ...any) {
	c.log(slog.LevelError, format, v...)
	select {
	case c.fatal <- fmt.Sprintf(format, v...):
	default:
	}
}
