package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
)

// ProtocolVersion is the version of the bus messages. A message of another
// version is refused with ErrVersion, never guessed at. Version 4: reports
// and syncs carry per pool a count of assigned units and the pods'
// keys, not a list of units (a version 3 allocator would read a version 4
// report as no pod addressed, and plan for every pod again). Version 3: a
// NodeLease lists units only and the agent's assignments are its own
// (reports carry the agent's state, never written to the API); a sync
// reply lists every unit the node may hold, assigned ones included, and
// the agent voids what it does not list; a revoke asks for a count.
// Version 2's agent would take a version 3 sync reply as granting the
// units it assigned and version 3's would void what a version 2 reply
// leaves out: either half with the other is unsafe.
const ProtocolVersion = 4

// Subjects. Every exchange is a request with a reply: core NATS may drop a
// message, so each sender retries until answered, and every message is
// idempotent (a grant of a unit already held, a report already applied,
// changes nothing). docs/protocol.md describes each one.
//
// Every subject names the node it concerns: an agent sends on
// "warmpool.v1.agent.<node>.*" and listens on "warmpool.v1.node.<node>.*",
// so that a server can limit each agent's credential to its own node's
// subjects (docs/security.md), and the allocator refuses a request whose
// body names another node than its subject.
const (
	// SubjectMissAll: agent -> allocator, MissRequest / MissReply; the
	// allocator's subscription to every node's SubjectMissFrom.
	SubjectMissAll = "warmpool.v1.agent.*.miss"
	// SubjectReportAll: agent -> allocator, Report / ReportReply: the
	// agent's state, soft (never an API write).
	SubjectReportAll = "warmpool.v1.agent.*.report"
	// SubjectSyncAll: agent -> allocator, SyncRequest / SyncReply.
	SubjectSyncAll = "warmpool.v1.agent.*.sync"
)

// NodeToken is a node's name as one subject token. Node names may hold
// dots, which NATS reads as token separators; they cannot hold
// underscores, so mapping '.' to '_' is one to one.
func NodeToken(node string) string { return strings.ReplaceAll(node, ".", "_") }

// SubjectMissFrom is where node's agent asks the allocator for units on a
// cache miss.
func SubjectMissFrom(node string) string { return agentPrefix + NodeToken(node) + ".miss" }

// SubjectReportFrom is where node's agent reports its state (what it holds
// warm and assigned, and to which pods).
func SubjectReportFrom(node string) string { return agentPrefix + NodeToken(node) + ".report" }

// SubjectSyncFrom is where node's agent sends its whole record.
func SubjectSyncFrom(node string) string { return agentPrefix + NodeToken(node) + ".sync" }

// AgentSubjects is the wildcard of every subject node's agent sends on:
// what its credential may publish to.
func AgentSubjects(node string) string { return agentPrefix + NodeToken(node) + ".>" }

// NodeSubjects is the wildcard of every subject the allocator sends node's
// agent requests on: what its credential may subscribe to.
func NodeSubjects(node string) string { return nodePrefix + NodeToken(node) + ".>" }

// AgentInboxPrefix is the prefix of node's agent's reply inboxes
// (nats.CustomInboxPrefix): its credential may subscribe to
// AgentInboxPrefix(node)+".>" and to no other node's replies.
func AgentInboxPrefix(node string) string { return "_INBOX_warmpool." + NodeToken(node) }

// SubjectNodeToken returns the node token of a subject an agent sends on
// ("warmpool.v1.agent.<token>.<kind>"), and false for any other subject.
func SubjectNodeToken(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, agentPrefix)
	if !ok {
		return "", false
	}
	token, kind, ok := strings.Cut(rest, ".")
	if !ok || token == "" || kind == "" || strings.Contains(kind, ".") {
		return "", false
	}
	return token, true
}

const (
	agentPrefix = "warmpool.v1.agent."
	nodePrefix  = "warmpool.v1.node."
)

// SubjectGrant is where the allocator pushes Grants to a node's agent.
func SubjectGrant(node string) string { return nodePrefix + NodeToken(node) + ".grant" }

// SubjectRevoke is where the allocator asks a node's agent to give back
// warm units, under scarcity.
func SubjectRevoke(node string) string { return nodePrefix + NodeToken(node) + ".revoke" }

// ErrVersion means a message is of another protocol version.
var ErrVersion = errors.New("bus protocol version mismatch")

// Route is a route of a pool.
type Route struct {
	Dst string `json:"dst"`
	GW  string `json:"gw,omitempty"`
}

// PoolInfo is what an agent needs to answer an ADD from a pool.
type PoolInfo struct {
	Name     string  `json:"name"`
	Prefix4  int     `json:"prefix4,omitempty"`
	Prefix6  int     `json:"prefix6,omitempty"`
	Gateway4 string  `json:"gateway4,omitempty"`
	Gateway6 string  `json:"gateway6,omitempty"`
	Routes   []Route `json:"routes,omitempty"`
}

// Unit is one allocation unit: its ID (primary address) and addresses.
type Unit struct {
	ID   string `json:"id"`
	IPv4 string `json:"ipv4,omitempty"`
	IPv6 string `json:"ipv6,omitempty"`
}

// Grant pushes warm units of a pool to a node. The allocator has persisted
// them in the node's NodeLease before sending. Gen is the lease's
// metadata.generation after that write: an agent ignores a unit it gave
// back (revoke) at a generation not older than Gen, so a grant overtaken
// by a revoke cannot bring the unit back.
type Grant struct {
	V     int      `json:"v"`
	Epoch uint64   `json:"epoch"`
	Node  string   `json:"node"`
	Gen   int64    `json:"gen"`
	Pool  PoolInfo `json:"pool"`
	Units []Unit   `json:"units"`
}

// Ack answers a Grant. Error is set when the agent refused it (a stale
// epoch, or a store failure).
type Ack struct {
	V     int    `json:"v"`
	Error string `json:"error,omitempty"`
}

// Revoke asks a node to give back up to Count warm units of a pool,
// chosen among IDs (the units its lease lists: the allocator does not
// know which of them are warm, the agent does).
type Revoke struct {
	V     int    `json:"v"`
	Epoch uint64 `json:"epoch"`
	Pool  string `json:"pool"`
	// Gen is the node's lease generation when the revoke was sent; any
	// message listing the units at a generation up to Gen is stale.
	Gen   int64    `json:"gen"`
	IDs   []string `json:"ids"`
	Count int      `json:"count"`
}

// Revoked lists the units the node gave back: removed from its cache and
// its record before it answered. Units it was no longer holding warm (an
// ADD took them) are not listed.
type Revoked struct {
	V     int      `json:"v"`
	IDs   []string `json:"ids"`
	Error string   `json:"error,omitempty"`
}

// MissRequest asks for units of a pool for a node whose cache is empty.
type MissRequest struct {
	V     int    `json:"v"`
	Node  string `json:"node"`
	Pool  string `json:"pool"`
	Count int    `json:"count"`
}

// MissReply grants the units (persisted first), or says why not.
type MissReply struct {
	V         int      `json:"v"`
	Epoch     uint64   `json:"epoch"`
	Gen       int64    `json:"gen"`
	Pool      PoolInfo `json:"pool"`
	Units     []Unit   `json:"units,omitempty"`
	Exhausted bool     `json:"exhausted,omitempty"`
	// Retry: nothing could be granted now, but units warm on other nodes
	// may be freed by the revokes under way; ask again shortly.
	Retry bool   `json:"retry,omitempty"`
	Error string `json:"error,omitempty"`
}

// Report is an agent's state: per pool, how many of its units are
// assigned and to which pods (a node's warm units are its lease less
// these, so they are not sent), and what its run served. It is soft
// state: the allocator keeps the newest in memory for planning (a pod
// with an address is not demand), the pools' status and metrics, and
// never writes it to the API, so a lost report costs nothing but
// freshness. Run identifies the agent process and Seq numbers its reports
// and syncs: the allocator ignores one older than the newest it applied
// from that run.
type Report struct {
	V      int                  `json:"v"`
	Node   string               `json:"node"`
	Run    string               `json:"run"`
	Seq    uint64               `json:"seq"`
	Pools  map[string]Addressed `json:"pools,omitempty"`
	Served map[string]Served    `json:"served,omitempty"`
}

// Addressed is what an agent's state says of one pool: how many of its
// units are assigned, and the pods they are assigned to, each once, by
// PodKey. A report goes out after every ADD and DEL, so it carries no
// unit IDs, addresses or attachments: the allocator needs none of them.
type Addressed struct {
	Assigned int      `json:"assigned"`
	Pods     []string `json:"pods,omitempty"`
}

// PodKey identifies the pod of an assignment in an Addressed: its UID, or
// its name when the runtime passed no UID.
func PodKey(namespace, name, uid string) string {
	if uid != "" {
		return uid
	}
	return "name:" + namespace + "/" + name
}

// Served counts, per pool, the ADDs an agent run assigned an address to,
// from its warm cache (hits) or after asking the allocator (misses). The
// counts are the agent's and cumulative over the run, so that a report
// or sync that is lost, retried or overtaken neither loses nor repeats
// one: the allocator adds what grew since the last message of the run it
// applied.
type Served struct {
	Hits   int64 `json:"hits,omitempty"`
	Misses int64 `json:"misses,omitempty"`
}

// ReportReply acknowledges a Report.
type ReportReply struct {
	V     int    `json:"v"`
	Epoch uint64 `json:"epoch"`
	Seq   uint64 `json:"seq"`
	Error string `json:"error,omitempty"`
}

// SyncRequest asks for the node's leases, with the agent's state (as a
// Report's), on start, on every reconnection and periodically.
type SyncRequest struct {
	V    int    `json:"v"`
	Node string `json:"node"`
	Run  string `json:"run"`
	Seq  uint64 `json:"seq"`
	// Pools and Served: as Report's.
	Pools  map[string]Addressed `json:"pools,omitempty"`
	Served map[string]Served    `json:"served,omitempty"`
	// GaveBack are the units the agent gave back to a revoke and has not
	// seen listed at a newer generation since: the revoke's answer may
	// never have reached the allocator (lost, or past its timeout).
	GaveBack []GaveBack `json:"gaveBack,omitempty"`
}

// GaveBack is a unit an agent dropped for a revoke, and the generation the
// revoke carried.
type GaveBack struct {
	Pool string `json:"pool"`
	ID   string `json:"id"`
	Gen  int64  `json:"gen"`
}

// Lease is every unit of one pool the node may hold, warm or assigned, as
// its NodeLease lists them at generation Gen (less those the allocator is
// taking back).
type Lease struct {
	Pool  PoolInfo `json:"pool"`
	Gen   int64    `json:"gen"`
	Units []Unit   `json:"units"`
}

// SyncReply is the allocator's record of the node: the agent keeps these
// units and drops every other one it held at the reply's generation,
// voiding an assigned one (only a lost node's, its pods gone, can be
// one).
type SyncReply struct {
	V      int     `json:"v"`
	Epoch  uint64  `json:"epoch"`
	Leases []Lease `json:"leases"`
	// WarmTTLMillis is how long the agent may use its warm units without
	// an answer from the allocator: less than the node-loss grace period,
	// after which the allocator may reclaim them without the agent's
	// confirmation.
	WarmTTLMillis int64  `json:"warmTTLms,omitempty"`
	Error         string `json:"error,omitempty"`
}

// Encode marshals a message. Messages are plain structs: this cannot fail
// for them, and a failure is a programming error worth its panic in tests.
func Encode(msg any) []byte {
	b, err := json.Marshal(msg)
	if err != nil {
		panic(fmt.Sprintf("encode %T: %v", msg, err))
	}
	return b
}

// Decode unmarshals a message and checks its version. The body is parsed
// once (a report lists every unit of its node); only a body that does not
// decode is parsed again, for its version alone, so that an agent of
// another version is told so rather than given a decoding error.
func Decode(data []byte, msg any) error {
	if err := json.Unmarshal(data, msg); err != nil {
		var head struct {
			V int `json:"v"`
		}
		if json.Unmarshal(data, &head) == nil && head.V != ProtocolVersion {
			return fmt.Errorf("decode %T: %w: got v%d, want v%d", msg, ErrVersion, head.V, ProtocolVersion)
		}
		return fmt.Errorf("decode %T: %w", msg, err)
	}
	if v := versionOf(msg); v != ProtocolVersion {
		return fmt.Errorf("decode %T: %w: got v%d, want v%d", msg, ErrVersion, v, ProtocolVersion)
	}
	return nil
}

// versionOf reads the V field every message has.
func versionOf(msg any) int {
	v := reflect.ValueOf(msg)
	for v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return 0
	}
	f := v.FieldByName("V")
	if !f.IsValid() || !f.CanInt() {
		return 0
	}
	return int(f.Int())
}

// SplitAttachment splits an event's or an assignment's attachment,
// "<containerID>/<ifname>", into its parts.
func SplitAttachment(att string) (containerID, ifname string) {
	i := strings.LastIndex(att, "/")
	if i < 0 {
		return att, ""
	}
	return att[:i], att[i+1:]
}
