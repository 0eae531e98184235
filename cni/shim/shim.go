// Package shim is the plugin binary the container runtime execs, all of
// it: it forwards the exec to the node agent over the agent's socket and
// prints the answer. Of the network config it reads only where the agent
// listens and how long to wait; every check, and the result in the
// runtime's CNI version, are the agent's (package cni, which the agent
// serves). It links no CNI library: the exec, twice per pod, is what the
// IPAM costs the node beyond the agent's own work, and most of that is
// the Go runtime's start.
package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/warmpool/warmpool/agent/wire"
)

// About is printed when the binary is run by hand (no CNI_COMMAND).
const About = "warmpool IPAM: addresses from the node's warm cache"

// DefaultTimeout is ipam.timeout's default: how long the agent works on a
// request. A warm hit answers in milliseconds; the bound covers a cache
// miss that waits for the allocator.
const DefaultTimeout = 10 * time.Second

// margin is how much longer than ipam.timeout the plugin waits: the agent
// applies ipam.timeout itself and answers with its own error, which says
// more than the plugin can.
const margin = 2 * time.Second

// target is what the plugin reads of the network config.
type target struct {
	IPAM struct {
		Socket  string `json:"socket"`
		Timeout string `json:"timeout"`
	} `json:"ipam"`
}

// Main runs one exec and returns its exit code.
func Main(getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd := getenv("CNI_COMMAND")
	switch cmd {
	case "":
		fmt.Fprintln(stderr, About)
		fmt.Fprintf(stderr, "CNI protocol versions supported: %s\n", strings.Join(wire.SpecVersions, ", "))
		return 0
	case "VERSION":
		// Answered here, so that a runtime can ask with no agent running.
		_ = json.NewEncoder(stdout).Encode(struct {
			CNIVersion        string   `json:"cniVersion"`
			SupportedVersions []string `json:"supportedVersions"`
		}{wire.SpecCurrent, wire.SpecVersions})
		return 0
	}
	in, err := io.ReadAll(io.LimitReader(stdin, wire.MaxMessage+1))
	if err != nil {
		return fail(stdout, wire.CodeIOFailure, fmt.Sprintf("error reading from stdin: %v", err), "")
	}
	socket, timeout := where(in)
	msg, err := wire.EncodeInvocation(getenv, in)
	if err != nil {
		return fail(stdout, wire.CodeInvalidEnv, err.Error(), "")
	}
	answer, err := wire.Call(socket, msg, time.Now().Add(timeout+margin))
	switch {
	case errors.Is(err, wire.ErrAgentUnreachable):
		code := wire.CodeTryAgainLater
		if cmd == "STATUS" {
			code = wire.CodeNotAvailable
		}
		return fail(stdout, code, fmt.Sprintf("the warmpool agent is not running on this node (no socket at %s)", socket),
			"check the warmpool-agent DaemonSet's pod on this node; the runtime retries")
	case errors.Is(err, wire.ErrClosed):
		return fail(stdout, wire.CodeTryAgainLater, fmt.Sprintf("the warmpool agent closed the connection before answering %s (restarting?)", cmd),
			"the runtime retries; an ADD retried for the same container gets what the agent recorded")
	case errors.Is(err, wire.ErrTimeout):
		return fail(stdout, wire.CodeTryAgainLater, fmt.Sprintf("the warmpool agent did not answer %s within %s", cmd, timeout+margin), err.Error())
	case err != nil:
		return fail(stdout, wire.CodeIOFailure, fmt.Sprintf("talking to the warmpool agent at %s failed", socket), err.Error())
	}
	out, exit, err := wire.ParseAnswer(answer)
	switch {
	case errors.Is(err, wire.ErrOtherVersion):
		return fail(stdout, wire.CodeIOFailure, fmt.Sprintf("the warmpool agent at %s speaks another protocol", socket),
			"upgrade the plugin and the agent together: "+err.Error())
	case err != nil:
		return fail(stdout, wire.CodeIOFailure, fmt.Sprintf("talking to the warmpool agent at %s failed", socket), err.Error())
	}
	if _, err := stdout.Write(out); err != nil {
		return 1
	}
	return exit
}

// where reads the agent's socket and the timeout from the network config,
// their defaults where the config does not give them or cannot be read:
// the agent then reports what is wrong with it.
func where(conf []byte) (string, time.Duration) {
	var t target
	_ = json.Unmarshal(conf, &t)
	socket, timeout := t.IPAM.Socket, DefaultTimeout
	if socket == "" {
		socket = wire.DefaultSocket
	}
	if d, err := time.ParseDuration(t.IPAM.Timeout); err == nil && d > 0 {
		timeout = d
	}
	return socket, timeout
}

// fail prints a CNI error as skel does and returns the exit code.
func fail(stdout io.Writer, code uint, msg, details string) int {
	b, _ := json.MarshalIndent(struct {
		Code    uint   `json:"code"`
		Msg     string `json:"msg"`
		Details string `json:"details,omitempty"`
	}{code, msg, details}, "", "    ")
	_, _ = stdout.Write(b)
	return 1
}
