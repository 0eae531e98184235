package broker_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/warmpool/warmpool/broker"
)

// TestEmbeddedServerTLS: with a certificate, the embedded server refuses
// a client without TLS, accepts one that verifies it with the CA file
// (--nats-ca-file), and the allocator's in-process connection needs none.
func TestEmbeddedServerTLS(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "warmpool-nats"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := broker.StartServer(broker.ServerOptions{TLS: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12},
		Auth: broker.NewServerAuth(nil, nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	admin, err := srv.Connect(ctx, "allocator")
	if err != nil {
		t.Fatalf("the allocator's in-process connection: %v", err)
	}
	admin.Close()
	if conn, err := broker.Connect(ctx, srv.ClientURL(), "plain"); err == nil {
		conn.Close()
		t.Fatal("a client without TLS connected")
	}
	opts, err := broker.ClientAuth{CAFile: ca}.Options()
	if err != nil {
		t.Fatal(err)
	}
	// TLS verified, then refused for want of a credential: Agents is nil.
	_, err = broker.Connect(ctx, srv.ClientURL(), "tls", opts...)
	if err == nil || !isAuthorization(err) {
		t.Fatalf("a TLS client without a credential: %v, want an authorization violation after the handshake", err)
	}
}

func isAuthorization(err error) bool { return errors.Is(err, nats.ErrAuthorization) }
