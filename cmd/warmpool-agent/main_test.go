package main

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// Bad flags are refused at once, with exit code 2 and a line that says
// what is wanted, before the agent touches its socket or record.
func TestBadFlagsAreRefused(t *testing.T) {
	bin := testenv.Binary(t, "warmpool-agent")
	for name, args := range map[string][]string{
		"no node":            {"--nats-url=nats://127.0.0.1:1"},
		"no nats url":        {"--node=n1"},
		"negative max-procs": {"--node=n1", "--nats-url=nats://127.0.0.1:1", "--max-procs=-1"},
		"bad log level":      {"--node=n1", "--nats-url=nats://127.0.0.1:1", "--log-level=loud"},
	} {
		t.Run(name, func(t *testing.T) {
			// An agent that took the flags would start and keep trying
			// the bus: the deadline turns that into a failure.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, args...)
			cmd.Env = []string{} // no $NODE_NAME from the test's environment
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("%v: %v, output %q; want exit code 2", args, err, out)
			}
			if !strings.Contains(string(out), "--max-procs is 0 or more") {
				t.Errorf("%v: output %q does not say what is wanted", args, out)
			}
		})
	}
}
