package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/warmpool/warmpool/internal/inspect"
)

func TestParseAgentFlags(t *testing.T) {
	got, err := parseAgentFlags([]string{"node-1=http://10.0.0.5:9420", "node.b=https://agent.example:9420/"})
	if err != nil || got["node-1"] != "http://10.0.0.5:9420" || got["node.b"] != "https://agent.example:9420/" {
		t.Fatalf("parseAgentFlags = %v, %v", got, err)
	}
	for _, bad := range [][]string{{"node-1"}, {"=http://x:1"}, {"n="}, {"n=10.0.0.5:9420"}, {"n=ftp://x"}, {"n=http://"}, {"n=http://a:1", "n=http://b:1"}} {
		if got, err := parseAgentFlags(bad); err == nil {
			t.Errorf("parseAgentFlags(%q) = %v, want an error", bad, got)
		}
	}
}

// TestBadCommandLines fail with exit 1 and a message, before any
// connection is tried.
func TestBadCommandLines(t *testing.T) {
	for _, args := range [][]string{
		{"where"},
		{"where", "10.20.0", "--kubeconfig", "/nonexistent"},
		{"where", "not-an-address"},
		{"pools", "-o", "yaml"},
		{"nodes", "--agent", "n1"},
		{"frobnicate"},
		{"doctor", "extra"},
	} {
		var out, errOut bytes.Buffer
		code := Run(args, &out, &errOut)
		if code != inspect.ExitFailed || !strings.HasPrefix(errOut.String(), "error: ") {
			t.Errorf("%q: exit %d, stderr %q; want %d and an error", args, code, errOut.String(), inspect.ExitFailed)
		}
	}
}

func TestUnreachableAPIIsAnError(t *testing.T) {
	var out, errOut bytes.Buffer
	code := Run([]string{"pools", "--server", "https://127.0.0.1:1", "--insecure-skip-tls-verify", "--request-timeout", "2s"}, &out, &errOut)
	if code != inspect.ExitFailed || !strings.Contains(errOut.String(), "list IPPools") {
		t.Errorf("exit %d, stderr %q", code, errOut.String())
	}
}
