// Package wire is the protocol between the CNI plugin and the node agent
// on the agent's unix socket (frame.go), and the request and response the
// agent's CNI layer (package cni, in the agent) hands to the agent.
//
// The plugin forwards: it sends the exec as the runtime made it (the CNI
// environment and the network config) and prints what the agent answers
// (its stdout and exit code). What CNI means (the version checks, the
// config, the result in the runtime's version) is the agent's alone, so the
// binary on a host does not change with it, and an exec, twice per pod,
// costs little more than Go's start. The package imports only the standard
// library and no encoding/json, so that the plugin binary stays small.
// docs/protocol.md describes it.
package wire

import "fmt"

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
	Op Op `json:"op"`
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
