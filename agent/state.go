package agent

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"

	"github.com/warmpool/warmpool/agent/store"
)

// StatePath is where the agent serves its State, on the metrics address.
const StatePath = "/state"

// State is the node's record as the agent's store holds it (what survives
// a crash), for the fault suite's checker and an operator's cross-checks.
type State struct {
	Node  string `json:"node"`
	Epoch uint64 `json:"epoch"`
	// Fenced says why the warm units may not be used now; empty when they
	// may.
	Fenced      string             `json:"fenced,omitempty"`
	Units       []store.Unit       `json:"units"`
	Assignments []store.Assignment `json:"assignments"`
}

// State reads the node's record from the store; fenced (nil: never) says
// whether the warm units may be used.
func (a *Agent) State(fenced func() error) (*State, error) {
	snap, err := a.store.Load()
	if err != nil {
		return nil, err
	}
	st := &State{Node: a.cfg.Node, Epoch: snap.Epoch, Units: make([]store.Unit, 0, len(snap.Units)),
		Assignments: make([]store.Assignment, 0, len(snap.Assignments))}
	if fenced != nil {
		if err := fenced(); err != nil {
			st.Fenced = err.Error()
		}
	}
	for _, u := range snap.Units {
		st.Units = append(st.Units, u)
	}
	for _, as := range snap.Assignments {
		st.Assignments = append(st.Assignments, as)
	}
	slices.SortFunc(st.Units, func(x, y store.Unit) int { return cmp.Or(cmp.Compare(x.Pool, y.Pool), cmp.Compare(x.ID, y.ID)) })
	slices.SortFunc(st.Assignments, func(x, y store.Assignment) int { return cmp.Compare(x.Attachment, y.Attachment) })
	return st, nil
}

// StateHandler serves State as JSON.
func (a *Agent) StateHandler(fenced func() error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, err := a.State(fenced)
		if err != nil {
			http.Error(w, "read the agent's record: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	})
}
