package broker

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ServerAuth is the embedded server's authentication (docs/security.md):
// the allocator's own connections by a user and password, with every
// permission, and each agent by a token that AgentAuthenticator maps to
// its node, with permissions for that node's subjects only. Every other
// client is refused.
type ServerAuth struct {
	// User and Password authenticate the allocator's connections. The
	// allocator starts the server in-process, so NewServerAuth draws them
	// at random: they never leave the process.
	User, Password string
	// Agents authenticates agents by the token they connect with; nil
	// refuses every client but the allocator's.
	Agents AgentAuthenticator
	// ReviewTimeout bounds one authentication of an agent; default 5 s.
	// The server's auth timer is stopped before it runs.
	ReviewTimeout time.Duration
	// Logger receives a warning for each refused client; nil logs nothing.
	Logger *slog.Logger
}

// NewServerAuth returns a ServerAuth with a random allocator credential.
func NewServerAuth(agents AgentAuthenticator, log *slog.Logger) *ServerAuth {
	pass := make([]byte, 32)
	_, _ = rand.Read(pass)
	return &ServerAuth{User: "warmpool-allocator", Password: hex.EncodeToString(pass), Agents: agents, Logger: log}
}

// AgentIdentity is what an agent's credential proves.
type AgentIdentity struct {
	// Node is the node the agent runs on: its connection may use that
	// node's subjects only.
	Node string
	// Expires is when the credential stops being valid; the server closes
	// the connection then, and the agent reconnects with its rotated
	// token. Zero: never.
	Expires time.Time
	// Name describes the credential in logs (the service account and its
	// pod, say); never the token.
	Name string
}

// AgentAuthenticator maps an agent's token to its identity, or fails.
type AgentAuthenticator interface {
	AuthenticateAgent(ctx context.Context, token string) (AgentIdentity, error)
}

// ErrUnauthenticated means a credential was refused.
var ErrUnauthenticated = errors.New("not authenticated")

// AgentPermissions are the permissions of node's agent on the bus: publish
// its own requests and the replies to requests it received, subscribe to
// its own node's subjects and its own reply inboxes (an agent connects
// with nats.CustomInboxPrefix(AgentInboxPrefix(node))).
func AgentPermissions(node string) *server.Permissions {
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{AgentSubjects(node)}},
		Subscribe: &server.SubjectPermission{Allow: []string{NodeSubjects(node), AgentInboxPrefix(node) + ".>"}},
		// One reply per request received (a grant or a revoke),
		// within a minute: the allocator waits for seconds.
		Response: &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
	}
}

// Check implements server.Authentication: nats-server calls it for each
// client's CONNECT, its auth timer stopped.
func (a *ServerAuth) Check(c server.ClientAuthentication) bool {
	if c.Kind() != server.CLIENT {
		return false
	}
	o := c.GetOpts()
	if o.Username != "" || o.Password != "" {
		if a.User != "" && subtle.ConstantTimeCompare([]byte(o.Username), []byte(a.User)) == 1 &&
			subtle.ConstantTimeCompare([]byte(o.Password), []byte(a.Password)) == 1 {
			c.RegisterUser(&server.User{Username: a.User}) // every permission
			return true
		}
		a.refused(c, "wrong user or password", o.Username)
		return false
	}
	if o.Token == "" || a.Agents == nil {
		a.refused(c, "no credential", "")
		return false
	}
	timeout := a.ReviewTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	id, err := a.Agents.AuthenticateAgent(ctx, o.Token)
	if err != nil {
		a.refused(c, err.Error(), "")
		return false
	}
	c.RegisterUser(&server.User{Username: "warmpool-agent:" + id.Node, Permissions: AgentPermissions(id.Node), ConnectionDeadline: id.Expires})
	if a.Logger != nil {
		a.Logger.Debug("agent authenticated", "node", id.Node, "credential", id.Name, "remote", remote(c), "expires", id.Expires)
	}
	return true
}

func (a *ServerAuth) refused(c server.ClientAuthentication, why, user string) {
	if a.Logger != nil {
		a.Logger.Warn("bus client refused", "reason", why, "user", user, "remote", remote(c), "name", c.GetOpts().Name)
	}
}

func remote(c server.ClientAuthentication) string {
	if addr := c.RemoteAddress(); addr != nil {
		return addr.String()
	}
	return "in-process"
}
