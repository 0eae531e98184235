package allocator

import (
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

// refuseSender refuses an agent's request whose body names another node
// than its subject, "warmpool.v1.agent.<node>.<kind>": nil when they
// agree. A server that limits each agent's credential to its own node's
// subjects (broker.AgentPermissions) then stops an agent from speaking for
// another node: it can only publish on its own subject, and here the body
// must agree with it. The handlers ask once they decoded the body.
func (a *Allocator) refuseSender(subject, node string) *refusal {
	token, ok := broker.SubjectNodeToken(subject)
	var err error
	switch {
	case !ok:
		a.log.Warn("request refused: not an agent's subject", "subject", subject)
		err = fmt.Errorf("subject %q is not an agent's", subject)
	case broker.NodeToken(node) != token:
		a.log.Warn("request refused: its body names another node than its subject", "subject", subject, "node", subjectNode(subject), "body_node", node)
		err = fmt.Errorf("request on %s names node %q: an agent may speak only for the node of its subject", subject, node)
	default:
		return nil
	}
	a.metrics.refused.WithLabelValues(subject[strings.LastIndex(subject, ".")+1:]).Inc()
	return &refusal{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch, Error: err.Error()}
}
