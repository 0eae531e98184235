package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

var t0 = time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)

func open(t testing.TB) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func units(pool string, n int) []Unit {
	us := make([]Unit, n)
	for i := range us {
		ip := fmt.Sprintf("10.0.%d.%d", i/250, i%250+1)
		us[i] = Unit{Pool: pool, ID: ip, IPv4: ip, IPv6: fmt.Sprintf("fd00::%x", i+1)}
	}
	return us
}

func assignment(att string, u Unit) Assignment {
	return Assignment{Attachment: att, Pool: u.Pool, UnitID: u.ID, Pod: Pod{Namespace: "default", Name: att}, At: t0}
}

func TestLifecycleSurvivesReopen(t *testing.T) {
	s, path := open(t)
	pool := Pool{Name: "p", Prefix4: 24, Prefix6: 64, Gateway4: "10.0.0.254", Routes: []Route{{Dst: "0.0.0.0/0", GW: "10.0.0.254"}}}
	us := units("p", 3)
	if err := s.Grant(pool, us); err != nil {
		t.Fatal(err)
	}
	if err := s.Assign(assignment("c1/eth0", us[0])); err != nil {
		t.Fatal(err)
	}
	if err := s.Assign(assignment("c2/eth0", us[1])); err != nil {
		t.Fatal(err)
	}
	if _, found, err := s.Release("c2/eth0", t0); err != nil || !found {
		t.Fatalf("release: %v %v", found, err)
	}
	if _, err := s.SetEpoch(7); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	snap, err := s2.Load()
	if err != nil {
		t.Fatal(err)
	}
	if snap.Epoch != 7 || snap.Pools["p"].Gateway4 != "10.0.0.254" || len(snap.Pools["p"].Routes) != 1 {
		t.Errorf("epoch/pool after reopen: %d %+v", snap.Epoch, snap.Pools["p"])
	}
	want := map[string]State{us[0].ID: Assigned, us[1].ID: Cooling, us[2].ID: Warm}
	for id, st := range want {
		if got := snap.Units[Key{"p", id}]; got.State != st {
			t.Errorf("unit %s: state %s, want %s", id, got.State, st)
		}
	}
	if a, ok := snap.Assignments["c1/eth0"]; !ok || a.UnitID != us[0].ID || snap.Units[Key{"p", us[0].ID}].Attachment != "c1/eth0" {
		t.Errorf("assignment c1/eth0 after reopen: %+v", snap.Assignments)
	}
	if _, ok := snap.Assignments["c2/eth0"]; ok {
		t.Error("released assignment still recorded")
	}
	if !snap.Units[Key{"p", us[1].ID}].Since.Equal(t0) {
		t.Errorf("cooling since %v, want %v", snap.Units[Key{"p", us[1].ID}].Since, t0)
	}
}

// TestGrantRecordsPoolAndUnitsTogether: a grant stores the pool's
// parameters with its units (one transaction), a later grant updates
// them, and a grant listing a unit of another pool writes nothing.
func TestGrantRecordsPoolAndUnitsTogether(t *testing.T) {
	s, path := open(t)
	if err := s.Grant(Pool{Name: "p", Prefix4: 24}, append(units("p", 1), units("q", 1)...)); err == nil {
		t.Fatal("a grant of pool p listing a unit of pool q was accepted")
	}
	snap, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Pools) != 0 || len(snap.Units) != 0 {
		t.Fatalf("the refused grant wrote %d pools and %d units", len(snap.Pools), len(snap.Units))
	}
	if err := s.Grant(Pool{Name: "p", Prefix4: 24}, units("p", 2)); err != nil {
		t.Fatal(err)
	}
	if err := s.Grant(Pool{Name: "p", Prefix4: 25, Gateway4: "10.0.0.254"}, nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if snap, err = s.Load(); err != nil {
		t.Fatal(err)
	}
	if p := snap.Pools["p"]; p.Prefix4 != 25 || p.Gateway4 != "10.0.0.254" || len(snap.Units) != 2 {
		t.Fatalf("after two grants and a reopen: pool %+v, %d units, want /25 with its gateway and 2 units", p, len(snap.Units))
	}
}

func TestAssignRefusesWhatIsNotWarm(t *testing.T) {
	s, _ := open(t)
	us := units("p", 2)
	if err := s.Grant(Pool{Name: "p"}, us); err != nil {
		t.Fatal(err)
	}
	if err := s.Assign(assignment("c1/eth0", us[0])); err != nil {
		t.Fatal(err)
	}
	if err := s.Assign(assignment("c2/eth0", us[0])); !errors.Is(err, ErrUnitNotWarm) {
		t.Errorf("assign an assigned unit: %v", err)
	}
	if err := s.Assign(assignment("c1/eth0", us[1])); !errors.Is(err, ErrAttachmentTaken) {
		t.Errorf("assign a second unit to one attachment: %v", err)
	}
	if err := s.Assign(assignment("c3/eth0", Unit{Pool: "p", ID: "10.9.9.9"})); !errors.Is(err, ErrUnitNotWarm) {
		t.Errorf("assign an unknown unit: %v", err)
	}
	if _, _, err := s.Release("c1/eth0", t0); err != nil {
		t.Fatal(err)
	}
	// The agent's clock says when a cooling unit is warm again: the
	// record takes it.
	if err := s.Assign(assignment("c4/eth0", us[0])); err != nil {
		t.Errorf("assign a cooling unit: %v", err)
	}
	// A failed Assign wrote nothing: us[1] is still warm and unattached.
	snap, _ := s.Load()
	if u := snap.Units[us[1].Key()]; u.State != Warm || u.Attachment != "" {
		t.Errorf("unit after refused assigns: %+v", u)
	}
}

func TestReleaseUnknownSucceeds(t *testing.T) {
	s, _ := open(t)
	if _, found, err := s.Release("nobody/eth0", t0); err != nil || found {
		t.Fatalf("release unknown: found=%v err=%v", found, err)
	}
}

func TestGrantAndDropNeverUndoAnAssignment(t *testing.T) {
	s, _ := open(t)
	us := units("p", 2)
	if err := s.Grant(Pool{Name: "p"}, us); err != nil {
		t.Fatal(err)
	}
	if err := s.Assign(assignment("c1/eth0", us[0])); err != nil {
		t.Fatal(err)
	}
	if err := s.Grant(Pool{Name: "p"}, us[:1]); err != nil {
		t.Errorf("re-grant an assigned unit: %v", err)
	}
	if snap, _ := s.Load(); snap.Units[us[0].Key()].State != Assigned || len(snap.Assignments) != 1 {
		t.Errorf("a re-grant undid an assignment: %+v", snap.Units[us[0].Key()])
	}
	dropped, err := s.Drop([]Key{us[1].Key(), us[0].Key(), {"p", "10.9.9.9"}})
	if err != nil || len(dropped) != 1 || dropped[0] != us[1].Key() {
		t.Fatalf("drop a warm, an assigned and an unknown unit: dropped %v, %v; want only the warm one", dropped, err)
	}
	snap, _ := s.Load()
	if _, ok := snap.Units[us[1].Key()]; ok || snap.Units[us[0].Key()].State != Assigned || len(snap.Units) != 1 {
		t.Errorf("after drop: %+v", snap.Units)
	}
}

func TestEpochOnlyRises(t *testing.T) {
	s, _ := open(t)
	for _, tc := range []struct{ set, want uint64 }{{3, 3}, {2, 3}, {9, 9}, {0, 9}} {
		if got, err := s.SetEpoch(tc.set); err != nil || got != tc.want {
			t.Errorf("SetEpoch(%d) = %d, %v; want %d", tc.set, got, err, tc.want)
		}
	}
}

func TestFormatVersionChecked(t *testing.T) {
	s, path := open(t)
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyFormat, []byte("99")) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(path, Options{}); !errors.Is(err, ErrFormat) {
		t.Fatalf("open a newer format: %v", err)
	}
}

// TestConcurrentAssignsNeverShareAUnit races many assigns for few units:
// every unit ends with at most one attachment.
func TestConcurrentAssignsNeverShareAUnit(t *testing.T) {
	s, _ := open(t)
	us := units("p", 10)
	if err := s.Grant(Pool{Name: "p"}, us); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := map[string]string{}
	for i := range 100 {
		wg.Go(func() {
			u := us[i%len(us)]
			att := fmt.Sprintf("c%d/eth0", i)
			if err := s.Assign(assignment(att, u)); err == nil {
				mu.Lock()
				if prev, ok := won[u.ID]; ok {
					t.Errorf("unit %s assigned to %s and %s", u.ID, prev, att)
				}
				won[u.ID] = att
				mu.Unlock()
			} else if !errors.Is(err, ErrUnitNotWarm) {
				t.Errorf("assign: %v", err)
			}
		})
	}
	wg.Wait()
	snap, _ := s.Load()
	if len(won) != 10 || len(snap.Assignments) != 10 {
		t.Fatalf("%d units won, %d assignments recorded; want 10", len(won), len(snap.Assignments))
	}
	for att, a := range snap.Assignments {
		if snap.Units[Key{a.Pool, a.UnitID}].Attachment != att {
			t.Errorf("assignment %s and unit %s disagree", att, a.UnitID)
		}
	}
}

// TestVoidRemovesUnitsAndTheirAssignments: units another node holds now
// leave the record in any state, assigned ones with their assignment.
func TestVoidRemovesUnitsAndTheirAssignments(t *testing.T) {
	s, _ := open(t)
	us := units("p", 3)
	if err := s.Grant(Pool{Name: "p"}, us); err != nil {
		t.Fatal(err)
	}
	if err := s.Assign(assignment("c1/eth0", us[0])); err != nil {
		t.Fatal(err)
	}
	if err := s.Assign(assignment("c2/eth0", us[2])); err != nil {
		t.Fatal(err)
	}
	// c2's assignment is not the caller's to void (it does not hold that
	// attachment's lock): kept.
	voided, kept, err := s.Void([]Key{us[0].Key(), us[1].Key(), us[2].Key(), {Pool: "p", ID: "10.9.9.9"}}, []string{"c1/eth0"})
	if err != nil {
		t.Fatal(err)
	}
	if len(voided) != 1 || voided[0].Attachment != "c1/eth0" {
		t.Fatalf("voided %+v, want the assignment of c1/eth0", voided)
	}
	if len(kept) != 1 || kept[0] != us[2].Key() {
		t.Fatalf("kept %v, want %s (assigned to an attachment not locked)", kept, us[2].ID)
	}
	snap, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Units) != 1 || len(snap.Assignments) != 1 || snap.Assignments["c2/eth0"].UnitID != us[2].ID {
		t.Fatalf("after the void: units %v, assignments %v; want only %s assigned to c2", snap.Units, snap.Assignments, us[2].ID)
	}
	if _, found, err := s.Release("c1/eth0", t0); err != nil || found {
		t.Fatalf("DEL of the voided attachment: found %v, err %v; want a DEL of the unknown", found, err)
	}
}

// TestReadOnlyOpenWritesNothing: a dead agent's store is read without a
// write; a missing file is an error, not a new store.
func TestReadOnlyOpenWritesNothing(t *testing.T) {
	s, path := open(t)
	if err := s.Grant(Pool{Name: "p"}, units("p", 1)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := ro.Load()
	ro.Close()
	if err != nil || len(snap.Units) != 1 {
		t.Fatalf("read-only load: %v units, err %v", snap, err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "none.db"), Options{ReadOnly: true}); err == nil {
		t.Fatal("a read-only open of a missing file succeeded")
	}
}
