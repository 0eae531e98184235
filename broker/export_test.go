package broker

import (
	"fmt"

	"github.com/nats-io/nats-server/v2/server"
)

// ReviewCount is how many TokenReviews r has made.
func (r *TokenReviewer) ReviewCount() int64 { return r.reviews.Load() }

// WaitCache waits until r's cache has applied the sets made so far.
func (r *TokenReviewer) WaitCache() { r.cache.Wait() }

// Kick closes the connection of the client called name: it reconnects.
func (s *Server) Kick(name string) error {
	connz, err := s.ns.Connz(&server.ConnzOptions{})
	if err != nil {
		return err
	}
	for _, c := range connz.Conns {
		if c.Name == name {
			return s.ns.DisconnectClientByID(c.Cid)
		}
	}
	return fmt.Errorf("no client called %q", name)
}
