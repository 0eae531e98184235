package broker

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
)

// ClientAuth is how a component proves itself to the bus and checks the
// server: all files, so that Kubernetes can mount them from Secrets or a
// projected service-account token. The token and the password are re-read
// at every (re)connection, since a projected token is rotated on disk.
type ClientAuth struct {
	// CAFile verifies the server's TLS certificate and makes the
	// connection TLS.
	CAFile string
	// CredsFile is a NATS credentials file (user JWT and nkey seed), for
	// an external server in operator mode.
	CredsFile string
	// NkeySeedFile is a file holding an nkey seed.
	NkeySeedFile string
	// User and PasswordFile: a user and the file holding its password.
	User, PasswordFile string
	// TokenFile holds the token: an agent's projected service-account
	// token for the embedded server (docs/security.md), or a static token.
	TokenFile string
}

// AddFlags registers the --nats-* credential flags on fs.
func (c *ClientAuth) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.CAFile, "nats-ca-file", "", "PEM CA bundle that signed the NATS server's certificate: connect with TLS and verify it")
	fs.StringVar(&c.CredsFile, "nats-creds-file", "", "NATS credentials file (user JWT and nkey seed) for an external server")
	fs.StringVar(&c.NkeySeedFile, "nats-nkey-seed-file", "", "file holding an nkey seed to authenticate to an external server")
	fs.StringVar(&c.User, "nats-user", "", "NATS user name (with --nats-password-file) for an external server")
	fs.StringVar(&c.PasswordFile, "nats-password-file", "", "file holding the password of --nats-user, re-read at every connection")
	fs.StringVar(&c.TokenFile, "nats-token-file", "", "file holding the NATS token, re-read at every connection: an agent's projected service-account token (audience warmpool-nats) for the allocator's embedded server")
}

// Options are the nats.Options that c names; none when c is empty.
func (c ClientAuth) Options() ([]nats.Option, error) {
	n := 0
	for _, set := range []bool{c.CredsFile != "", c.NkeySeedFile != "", c.User != "" || c.PasswordFile != "", c.TokenFile != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		return nil, errors.New("nats credentials: give one of a credentials file, an nkey seed, a user and password, or a token")
	}
	if (c.User == "") != (c.PasswordFile == "") {
		return nil, errors.New("nats credentials: a user needs a password file and a password file a user")
	}
	var opts []nats.Option
	if c.CAFile != "" {
		if _, err := os.Stat(c.CAFile); err != nil {
			return nil, fmt.Errorf("nats CA: %w", err)
		}
		opts = append(opts, nats.RootCAs(c.CAFile))
	}
	switch {
	case c.CredsFile != "":
		if _, err := os.Stat(c.CredsFile); err != nil {
			return nil, fmt.Errorf("nats credentials: %w", err)
		}
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	case c.NkeySeedFile != "":
		o, err := nats.NkeyOptionFromSeed(c.NkeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("nats nkey seed: %w", err)
		}
		opts = append(opts, o)
	case c.User != "":
		if _, err := readSecret(c.PasswordFile); err != nil {
			return nil, fmt.Errorf("nats password: %w", err)
		}
		user, file := c.User, c.PasswordFile
		opts = append(opts, nats.UserInfoHandler(func() (string, string) {
			pass, _ := readSecret(file) // unreadable: refused, retried
			return user, pass
		}))
	case c.TokenFile != "":
		if _, err := readSecret(c.TokenFile); err != nil {
			return nil, fmt.Errorf("nats token: %w", err)
		}
		file := c.TokenFile
		opts = append(opts, nats.TokenHandler(func() string {
			token, _ := readSecret(file) // unreadable: refused, retried
			return token
		}))
	}
	return opts, nil
}

// readSecret reads a credential file, without its surrounding white
// space.
func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}
