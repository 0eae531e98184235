package broker

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"golang.org/x/sync/singleflight"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// DefaultAgentAudience is the audience of the agents' projected
// service-account tokens for the bus: a token made for the bus is good
// for nothing else, and no other token of the agent is good for the bus.
const DefaultAgentAudience = "warmpool-nats"

// NodeNameExtra is the TokenReview extra that names the node of the pod a
// token is bound to (Kubernetes 1.30 and later).
const NodeNameExtra = "authentication.kubernetes.io/node-name"

// TokenReviewerOptions configure a TokenReviewer.
type TokenReviewerOptions struct {
	// Audience the agents' tokens must be made for; default
	// DefaultAgentAudience.
	Audience string
	// ServiceAccount is the agents' service account, "namespace/name";
	// a token of any other is refused.
	ServiceAccount string
	// CacheTTL is how long an accepted token is trusted without a new
	// review (and never past its expiry); default 1 min. A token whose pod
	// was deleted is refused at the first review after that.
	CacheTTL time.Duration
	// RefusalTTL is how long a refused token stays refused without a new
	// review; default 2 s. An error of the API is never cached.
	RefusalTTL time.Duration
	// CacheSize bounds the cache, in tokens; default 10000. An eviction
	// only costs a review.
	CacheSize int64
}

// TokenReviewer authenticates agents by their projected service-account
// tokens: it asks the apiserver to review each one (a TokenReview with the
// bus's audience) and takes the agent's node from the token's binding to
// its pod. It needs RBAC to create tokenreviews.authentication.k8s.io.
type TokenReviewer struct {
	kube     kubernetes.Interface
	audience string
	username string // system:serviceaccount:<namespace>:<name>
	ttl      time.Duration
	refusal  time.Duration
	cache    *ristretto.Cache[string, reviewed]
	inflight singleflight.Group // one review at a time per token
	now      func() time.Time
	reviews  atomic.Int64 // TokenReviews made, for tests
}

// reviewed is a review's outcome, under the token's SHA-256: the cache
// keeps hashes of its keys only, and sum makes a hit exact.
type reviewed struct {
	sum [sha256.Size]byte
	id  AgentIdentity
	err error
}

// NewTokenReviewer returns a TokenReviewer; Close releases its cache.
func NewTokenReviewer(kube kubernetes.Interface, o TokenReviewerOptions) (*TokenReviewer, error) {
	ns, name, ok := strings.Cut(o.ServiceAccount, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("agent service account %q: want namespace/name", o.ServiceAccount)
	}
	if o.Audience == "" {
		o.Audience = DefaultAgentAudience
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = time.Minute
	}
	if o.RefusalTTL <= 0 {
		o.RefusalTTL = 2 * time.Second
	}
	if o.CacheSize <= 0 {
		o.CacheSize = 10000
	}
	cache, err := ristretto.NewCache(&ristretto.Config[string, reviewed]{
		NumCounters: 10 * o.CacheSize, MaxCost: o.CacheSize, BufferItems: 64})
	if err != nil {
		return nil, fmt.Errorf("token review cache: %w", err)
	}
	return &TokenReviewer{kube: kube, audience: o.Audience, username: "system:serviceaccount:" + ns + ":" + name,
		ttl: o.CacheTTL, refusal: o.RefusalTTL, cache: cache, now: time.Now}, nil
}

// Close releases the cache.
func (r *TokenReviewer) Close() { r.cache.Close() }

// AuthenticateAgent implements AgentAuthenticator.
func (r *TokenReviewer) AuthenticateAgent(ctx context.Context, token string) (AgentIdentity, error) {
	sum := sha256.Sum256([]byte(token))
	key := string(sum[:])
	if v, ok := r.cache.Get(key); ok && v.sum == sum && (v.id.Expires.IsZero() || r.now().Before(v.id.Expires)) {
		return v.id, v.err
	}
	// An agent's reconnections after an outage come at once: one review.
	v, _, _ := r.inflight.Do(key, func() (any, error) {
		id, final, err := r.review(ctx, token)
		switch {
		case err == nil:
			ttl := r.ttl
			if !id.Expires.IsZero() {
				ttl = min(ttl, id.Expires.Sub(r.now()))
			}
			if ttl > 0 {
				r.cache.SetWithTTL(key, reviewed{sum: sum, id: id}, 1, ttl)
			}
		case final:
			r.cache.SetWithTTL(key, reviewed{sum: sum, err: err}, 1, r.refusal)
		}
		return reviewed{sum: sum, id: id, err: err}, nil
	})
	out := v.(reviewed)
	return out.id, out.err
}

// review asks the apiserver; final says a refusal is the token's fault,
// not the API's.
func (r *TokenReviewer) review(ctx context.Context, token string) (id AgentIdentity, final bool, err error) {
	r.reviews.Add(1)
	tr, err := r.kube.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{r.audience}}}, metav1.CreateOptions{})
	if err != nil {
		return id, false, fmt.Errorf("token review: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		why := st.Error
		if why == "" {
			why = "not authenticated"
		}
		return id, true, fmt.Errorf("%w: token review: %s", ErrUnauthenticated, why)
	}
	// The apiserver checks the audience we asked for, but a client must
	// check that the token is valid for it.
	if !slices.Contains(st.Audiences, r.audience) {
		return id, true, fmt.Errorf("%w: token not made for audience %q (it is for %q)", ErrUnauthenticated, r.audience, st.Audiences)
	}
	if st.User.Username != r.username {
		return id, true, fmt.Errorf("%w: token of %s, want the agents' service account %s", ErrUnauthenticated, st.User.Username, r.username)
	}
	nodes := st.User.Extra[NodeNameExtra]
	if len(nodes) != 1 || nodes[0] == "" {
		return id, true, fmt.Errorf("%w: token of %s is not bound to a pod on a node (no %s: bind it to the agent's pod with a projected volume; Kubernetes 1.30 or later)",
			ErrUnauthenticated, st.User.Username, NodeNameExtra)
	}
	name := st.User.Username
	if pods := st.User.Extra["authentication.kubernetes.io/pod-name"]; len(pods) == 1 {
		name += " pod " + pods[0]
	}
	return AgentIdentity{Node: nodes[0], Expires: tokenExpiry(token), Name: name}, true, nil
}

// tokenExpiry reads the exp claim of a JWT the apiserver has just
// accepted; zero if it has none.
func tokenExpiry(token string) time.Time {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == 0 {
		return time.Time{}
	}
	return time.Unix(claims.Exp, 0)
}
