package broker

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestEmbeddedRequestReply(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bus, err := Open(ctx, Config{ClientName: "test-responder"})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	if !bus.Embedded() {
		t.Fatal("Open without a URL did not embed a server")
	}
	if _, err := bus.Conn.Subscribe("warmpool.test.echo", func(m *nats.Msg) {
		_ = m.Respond(append([]byte("echo:"), m.Data...))
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Conn.Flush(); err != nil {
		t.Fatal(err)
	}

	// A second client, as another component would be, reaches the responder
	// through the server's URL.
	client, err := Connect(ctx, bus.URL(), "test-requester")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	reply, err := client.RequestWithContext(ctx, "warmpool.test.echo", []byte("ping"))
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	if got := string(reply.Data); got != "echo:ping" {
		t.Fatalf("reply = %q, want %q", got, "echo:ping")
	}
}

func TestExternalURL(t *testing.T) {
	srv, err := StartServer(ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bus, err := Open(ctx, Config{URL: srv.ClientURL(), ClientName: "external"})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	if bus.Embedded() {
		t.Fatal("Open with a URL started its own server")
	}
	if bus.URL() != srv.ClientURL() {
		t.Fatalf("connected to %s, want %s", bus.URL(), srv.ClientURL())
	}
}

func TestConnectToDeadServerFails(t *testing.T) {
	// A port nobody listens on: reserve one, then release it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://" + l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := Open(ctx, Config{URL: url}); !errors.Is(err, nats.ErrNoServers) {
		t.Fatalf("Open(%s) = %v, want an error wrapping nats.ErrNoServers", url, err)
	}
}

func TestPortInUseFails(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	srv, err := StartServer(ServerOptions{Port: port})
	if err == nil {
		srv.Shutdown()
		t.Fatalf("StartServer on a taken port %d succeeded", port)
	}
	if !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("StartServer on a taken port: %v, want it to say the address is in use", err)
	}
}

// TestPublishedCountsMessages: Published grows by the messages clients
// publish, a request and its reply counting one each.
func TestPublishedCountsMessages(t *testing.T) {
	srv, err := StartServer(ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := Connect(ctx, srv.ClientURL(), "counter")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Subscribe("echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	before, err := srv.Published()
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := nc.Publish("nobody", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nc.RequestWithContext(ctx, "echo", []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	after, err := srv.Published()
	if err != nil {
		t.Fatal(err)
	}
	if after-before != 5 {
		t.Fatalf("published %d messages, want 5 (3 publishes, a request, its reply)", after-before)
	}
}
