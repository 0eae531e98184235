package allocator

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/warmpool/warmpool/broker"
)

// refusal answers a request the allocator will not serve. It decodes as a
// MissReply, a ReportReply or a SyncReply whose Error is set, so an agent
// reports it as it would any failed request.
type refusal struct {
	V     int    `json:"v"`
	Epoch uint64 `json:"epoch"`
	Error string `json:"error"`
}

// subjectNode is the node whose agent's subject this is, for the log
// (node names hold no '_', so broker.NodeToken's '.' to '_' reverses).
func subjectNode(subject string) string {
	token, _ := broker.SubjectNodeToken(subject)
	return strings.ReplaceAll(token, "_", ".")
}

// checkSender refuses an agent's request whose body names another node
// than its subject, "warmpool.v1.agent.<node>.<kind>". A server that
// limits each agent's credential to its own node's subjects
// (broker.AgentPermissions) then stops an agent from speaking for another
// node: it can only publish on its own subject, and here the body must
// agree with it. A body that does not decode is left to the handler, which
// answers the decoding error.
func (a *Allocator) checkSender(m broker.Msg) error {
	token, ok := broker.SubjectNodeToken(m.Subject)
	if !ok {
		a.log.Warn("request refused: not an agent's subject", "subject", m.Subject)
		return fmt.Errorf("subject %q is not an agent's", m.Subject)
	}
	var head struct {
		V    int    `json:"v"`
		Node string `json:"node"`
	}
	if err := json.Unmarshal(m.Data, &head); err != nil || head.V != broker.ProtocolVersion {
		return nil
	}
	if broker.NodeToken(head.Node) != token {
		a.log.Warn("request refused: its body names another node than its subject", "subject", m.Subject, "node", subjectNode(m.Subject), "body_node", head.Node)
		return fmt.Errorf("request on %s names node %q: an agent may speak only for the node of its subject", m.Subject, head.Node)
	}
	return nil
}
