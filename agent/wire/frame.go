package wire

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Version is the framing's version, in the header of both directions. An
// agent refuses a plugin of another version, and a plugin an agent of
// another, so mismatched releases fail loudly instead of misreading each
// other.
const Version = 2

// magic starts both headers: "warmpool-cni/2".
const magic = "warmpool-cni/"

// MaxMessage bounds one message, so a confused peer cannot make the other
// side buffer without limit.
const MaxMessage = 1 << 20

// SpecVersions are the CNI spec versions warmpool speaks, and SpecCurrent
// the one its VERSION answer is in (the CNI library's current one).
var SpecVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// SpecCurrent: see SpecVersions.
const SpecCurrent = "1.1.0"

// EnvNames are the variables of the CNI exec the plugin forwards, those
// the CNI spec and skel define.
var EnvNames = []string{"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH", "CNI_NETNS_OVERRIDE"}

// Invocation is one exec of the plugin as the runtime made it.
type Invocation struct {
	// Env holds the variables of EnvNames that were set (not empty).
	Env map[string]string
	// Stdin is the network config, as the runtime wrote it.
	Stdin []byte
}

// Getenv returns the variable's value, "" when unset (or inv nil).
func (inv *Invocation) Getenv(name string) string {
	if inv == nil {
		return ""
	}
	return inv.Env[name]
}

// EncodeInvocation frames an exec: a header line, one NAME=value line per
// variable set, an empty line, then stdin verbatim up to the end of the
// message (the plugin half-closes its side).
func EncodeInvocation(getenv func(string) string, stdin []byte) ([]byte, error) {
	b := make([]byte, 0, 512+len(stdin))
	b = append(b, magic...)
	b = strconv.AppendInt(b, Version, 10)
	b = append(b, '\n')
	for _, name := range EnvNames {
		v := getenv(name)
		if v == "" {
			continue
		}
		if strings.Contains(v, "\n") {
			return nil, fmt.Errorf("%w: %s contains a newline", ErrUnframable, name)
		}
		b = append(b, name...)
		b = append(b, '=')
		b = append(b, v...)
		b = append(b, '\n')
	}
	b = append(b, '\n')
	b = append(b, stdin...)
	if len(b) > MaxMessage {
		return nil, fmt.Errorf("%w: the network config and environment take %d bytes, more than %d", ErrUnframable, len(b), MaxMessage)
	}
	return b, nil
}

// ErrUnframable: an exec the framing cannot carry.
var ErrUnframable = errors.New("the exec cannot be sent to the agent")

// ParseInvocation reads what EncodeInvocation wrote.
func ParseInvocation(b []byte) (*Invocation, error) {
	if len(b) > MaxMessage {
		return nil, fmt.Errorf("message longer than %d bytes", MaxMessage)
	}
	header, rest, err := headerLine(b)
	if err != nil {
		return nil, err
	}
	if header != "" {
		return nil, fmt.Errorf("unexpected %q after the version", header)
	}
	inv := &Invocation{Env: map[string]string{}}
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			return nil, errors.New("the environment does not end in an empty line")
		}
		line := string(rest[:i])
		rest = rest[i+1:]
		if line == "" {
			break
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok || !known(name) {
			return nil, fmt.Errorf("environment line %q is not one of the CNI variables", line)
		}
		if _, dup := inv.Env[name]; dup {
			return nil, fmt.Errorf("%s given twice", name)
		}
		if value == "" {
			return nil, fmt.Errorf("%s given empty", name)
		}
		inv.Env[name] = value
	}
	inv.Stdin = rest
	return inv, nil
}

// EncodeAnswer frames the agent's answer: a header line with the exit
// code, then the bytes the plugin prints on stdout.
func EncodeAnswer(stdout []byte, exit int) []byte {
	b := make([]byte, 0, 32+len(stdout))
	b = append(b, magic...)
	b = strconv.AppendInt(b, Version, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(exit), 10)
	b = append(b, '\n')
	return append(b, stdout...)
}

// ErrOtherVersion is returned for a peer that speaks another version of
// the protocol (or none of warmpool's).
var ErrOtherVersion = errors.New("the peer speaks another protocol")

// ParseAnswer reads what EncodeAnswer wrote.
func ParseAnswer(b []byte) (stdout []byte, exit int, err error) {
	if len(b) > MaxMessage {
		return nil, 0, fmt.Errorf("answer longer than %d bytes", MaxMessage)
	}
	header, rest, err := headerLine(b)
	if err != nil {
		return nil, 0, err
	}
	code, err := strconv.Atoi(header)
	if err != nil || code < 0 || code > 255 || header != strconv.Itoa(code) {
		return nil, 0, fmt.Errorf("exit code %q is not a number from 0 to 255", header)
	}
	return rest, code, nil
}

// headerLine checks the first line's magic and version and returns what
// follows the version on it (after one space) and the rest of b.
func headerLine(b []byte) (string, []byte, error) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		if bytes.HasPrefix(b, []byte(magic)) || bytes.HasPrefix([]byte(magic), b) {
			return "", nil, fmt.Errorf("the message ends in its header line %q", b)
		}
		if len(b) > 64 {
			b = b[:64]
		}
		return "", nil, fmt.Errorf("%w: no header line in %q", ErrOtherVersion, b)
	}
	line := string(b[:i])
	if len(line) < len(magic) || line[:len(magic)] != magic {
		if len(line) > 64 {
			line = line[:64]
		}
		return "", nil, fmt.Errorf("%w: header %q", ErrOtherVersion, line)
	}
	v, extra, _ := strings.Cut(line[len(magic):], " ")
	if v != strconv.Itoa(Version) {
		return "", nil, fmt.Errorf("%w: version %q, this side speaks %d", ErrOtherVersion, v, Version)
	}
	return extra, b[i+1:], nil
}

func known(name string) bool {
	for _, n := range EnvNames {
		if n == name {
			return true
		}
	}
	return false
}

// Errors of Call, for the plugin to tell the runtime what to do.
var (
	// ErrAgentUnreachable: nothing listens on the socket.
	ErrAgentUnreachable = errors.New("warmpool agent unreachable")
	// ErrClosed: the agent closed the connection before its answer was
	// complete (it is restarting, say).
	ErrClosed = errors.New("the agent closed the connection")
	// ErrTimeout: no complete answer before the deadline.
	ErrTimeout = errors.New("no answer in time")
)

// Call sends msg (an EncodeInvocation) to the agent at socket and returns
// its whole answer, giving up at deadline. It speaks to the socket through
// system calls rather than package net: the plugin is exec'd twice per pod,
// and the network poller's start-up (an epoll instance, its threads) would
// cost each exec more than the exchange itself.
func Call(socket string, msg []byte, deadline time.Time) ([]byte, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	defer syscall.Close(fd)
	if err := setTimeout(fd, syscall.SO_SNDTIMEO, deadline); err != nil {
		return nil, err
	}
	if err := connect(fd, socket); err != nil {
		switch {
		case errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED):
			return nil, fmt.Errorf("%w at %s: %w", ErrAgentUnreachable, socket, err)
		case errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINPROGRESS):
			return nil, fmt.Errorf("connect to %s: %w", socket, ErrTimeout)
		}
		return nil, fmt.Errorf("connect to %s: %w", socket, err)
	}
	for sent := 0; sent < len(msg); {
		n, err := syscall.SendmsgN(fd, msg[sent:], nil, nil, syscall.MSG_NOSIGNAL)
		if err != nil {
			return nil, ioError("send", err)
		}
		sent += n
	}
	if err := syscall.Shutdown(fd, syscall.SHUT_WR); err != nil {
		return nil, ioError("send", err)
	}
	answer := make([]byte, 0, 4096)
	for {
		if err := setTimeout(fd, syscall.SO_RCVTIMEO, deadline); err != nil {
			return nil, err
		}
		if len(answer) == cap(answer) {
			answer = append(answer, 0)[:len(answer)]
		}
		n, err := syscall.Read(fd, answer[len(answer):cap(answer)])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, ioError("read", err)
		}
		if n == 0 {
			if len(answer) == 0 {
				return nil, ErrClosed
			}
			return answer, nil
		}
		answer = answer[:len(answer)+n]
		if len(answer) > MaxMessage {
			return nil, fmt.Errorf("answer longer than %d bytes", MaxMessage)
		}
	}
}

func connect(fd int, socket string) error {
	for {
		err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: socket})
		if err != syscall.EINTR {
			return err
		}
	}
}

// setTimeout sets the socket's send or receive timeout to what is left
// until deadline.
func setTimeout(fd, opt int, deadline time.Time) error {
	left := time.Until(deadline)
	if left <= 0 {
		return ErrTimeout
	}
	tv := syscall.NsecToTimeval(left.Nanoseconds())
	if tv.Sec == 0 && tv.Usec == 0 {
		tv.Usec = 1 // zero would mean no timeout
	}
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, opt, &tv); err != nil {
		return fmt.Errorf("socket timeout: %w", err)
	}
	return nil
}

func ioError(op string, err error) error {
	switch {
	case errors.Is(err, syscall.EAGAIN):
		return ErrTimeout
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return fmt.Errorf("%s: %w (%w)", op, ErrClosed, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}
