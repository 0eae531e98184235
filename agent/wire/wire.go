// Package wire is the protocol between the CNI plugin and the node agent on
// the agent's unix socket: one JSON request and one JSON response per
// connection, each a single line. It holds the message types and the
// client the plugin uses; it imports only the standard library so that the
// plugin binary stays small and starts fast. docs/protocol.md describes it.
package wire

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// Version is the protocol version. The agent rejects a request of another
// version with CodeIncompatible, so a plugin and an agent of mismatched
// releases fail loudly instead of misreading each other.
const Version = 1

// DefaultSocket is where the agent listens unless configured otherwise.
const DefaultSocket = "/run/warmpool/agent.sock"

// Op is a CNI operation.
type Op string

// Operations, as the CNI spec names them.
const (
	OpAdd    Op = "ADD"
	OpDel    Op = "DEL"
	OpCheck  Op = "CHECK"
	OpGC     Op = "GC"
	OpStatus Op = "STATUS"
)

// Pod identifies the pod an attachment is for, from CNI_ARGS.
type Pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
}

// Attachment is the key of an assignment: ADD is idempotent per key and
// ADD/DEL of one key are serialised.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// String formats the key as containerID/ifName.
func (a Attachment) String() string { return a.ContainerID + "/" + a.IfName }

// Request is what the plugin sends.
type Request struct {
	V  int `json:"v"`
	Op Op  `json:"op"`
	// Network is the netconf's name; Pool is the ipam section's pool, empty
	// to let the agent pick by the pod's annotations and the pools' selectors.
	Network string `json:"network,omitempty"`
	Pool    string `json:"pool,omitempty"`
	// Attachment and Netns are set for ADD, DEL and CHECK.
	Attachment
	Netns string `json:"netns,omitempty"`
	Pod   Pod    `json:"pod"`
	// Valid lists the attachments the runtime still uses, for GC.
	Valid []Attachment `json:"valid,omitempty"`
}

// Address is one assigned address with its prefix length and gateway.
type Address struct {
	// CIDR is the address with the subnet's prefix length, e.g. 10.0.0.5/24.
	CIDR    string `json:"cidr"`
	Gateway string `json:"gateway,omitempty"`
}

// Route is a route to give the pod.
type Route struct {
	Dst string `json:"dst"`
	GW  string `json:"gw,omitempty"`
}

// Result is the answer to ADD (and the record CHECK compares against).
type Result struct {
	Pool   string    `json:"pool"`
	IPs    []Address `json:"ips"`
	Routes []Route   `json:"routes,omitempty"`
	// Hit is true when ADD was served from the node's warm cache.
	Hit bool `json:"hit"`
}

// Response is what the agent answers. Exactly one of Error and Result is
// set for ADD; DEL, GC and STATUS set only Error, and only on failure.
type Response struct {
	V      int     `json:"v"`
	Error  *Error  `json:"error,omitempty"`
	Result *Result `json:"result,omitempty"`
}

// Error is a CNI error: a code from the CNI spec (or warmpool's own, from
// 100 up), a message that says what to do, and details.
type Error struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
}

func (e *Error) Error() string {
	if e.Details == "" {
		return fmt.Sprintf("%s (code %d)", e.Msg, e.Code)
	}
	return fmt.Sprintf("%s: %s (code %d)", e.Msg, e.Details, e.Code)
}

// Error codes. 1-99 are the CNI spec's; 100 and up are warmpool's.
const (
	CodeIncompatible     uint = 1
	CodeUnknownContainer uint = 3
	CodeInvalidEnv       uint = 4
	CodeIOFailure        uint = 5
	CodeDecoding         uint = 6
	CodeInvalidConfig    uint = 7
	CodeTryAgainLater    uint = 11
	CodeNotAvailable     uint = 50
	CodeInternal         uint = 999

	// CodeUnknownPool: the pool named in the netconf or an annotation
	// does not exist.
	CodeUnknownPool uint = 100
	// CodeNoPool: no pool's selectors match the pod.
	CodeNoPool uint = 101
	// CodePoolExhausted: the pool has no free address left anywhere.
	CodePoolExhausted uint = 102
	// CodePodNotFound: the pod in CNI_ARGS is not in the API.
	CodePodNotFound uint = 103
	// CodeMissTimeout: the node's cache was empty and the allocator did
	// not answer in time.
	CodeMissTimeout uint = 104
	// CodeCheckMismatch: CHECK found the attachment's addresses are not
	// (or no longer) assigned to it.
	CodeCheckMismatch uint = 105
)

// ErrAgentUnreachable means the socket could not be dialled: no agent
// listens there.
var ErrAgentUnreachable = errors.New("warmpool agent unreachable")

// Call sends req to the agent at socket and returns its response. It fails
// with an error wrapping ErrAgentUnreachable when nothing listens on the
// socket; ctx bounds the whole exchange.
func Call(ctx context.Context, socket string, req *Request) (*Response, error) {
	req.V = Version
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("%w at %s: %w", ErrAgentUnreachable, socket, err)
		}
		return nil, fmt.Errorf("dial warmpool agent at %s: %w", socket, err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := Write(conn, req); err != nil {
		return nil, fmt.Errorf("send %s to warmpool agent: %w", req.Op, err)
	}
	resp := &Response{}
	if err := Read(bufio.NewReader(conn), resp); err != nil {
		// The socket deadline is ctx's, so it may fire a moment before ctx
		// itself reports the deadline.
		var ne net.Error
		if ctx.Err() != nil || errors.As(err, &ne) && ne.Timeout() {
			return nil, fmt.Errorf("warmpool agent did not answer %s in time: %w", req.Op, context.DeadlineExceeded)
		}
		return nil, fmt.Errorf("read warmpool agent's answer to %s: %w", req.Op, err)
	}
	if resp.V != Version {
		return nil, fmt.Errorf("warmpool agent speaks protocol v%d, this plugin v%d: upgrade them together", resp.V, Version)
	}
	return resp, nil
}

// MaxMessage bounds one message, so a confused peer cannot make the other
// side buffer without limit.
const MaxMessage = 1 << 20

// Write writes v as one line of JSON.
func Write(conn net.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = conn.Write(append(b, '\n'))
	return err
}

// Read reads one line of JSON into v, refusing lines longer than MaxMessage.
func Read(r *bufio.Reader, v any) error {
	var line []byte
	for {
		chunk, isPrefix, err := r.ReadLine()
		if err != nil {
			return err
		}
		line = append(line, chunk...)
		if len(line) > MaxMessage {
			return fmt.Errorf("message longer than %d bytes", MaxMessage)
		}
		if !isPrefix {
			break
		}
	}
	if err := json.Unmarshal(line, v); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return nil
}
