// Package store is the node agent's durable record, in bbolt: the units
// (an address, or an IPv4/IPv6 pair) the node holds of each pool and their
// state, the assignments it made to pods, the pools' network parameters
// needed to answer an ADD, and the highest allocator epoch it has seen. The
// agent writes an assignment here before ADD returns (persist before
// acknowledge) and rebuilds its cache from here on restart.
//
// A Store is safe for concurrent use: bbolt serialises writers, and
// concurrent Assign and Release calls are coalesced into one commit
// (one fsync) by a group committer that never waits for company.
package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// FormatVersion is stamped in the file; a file of another version is
// refused rather than misread.
const FormatVersion = "1"

// State is the state of a unit on this node.
type State string

// Unit states on the node.
const (
	// Warm: free for this node's next pod.
	Warm State = "warm"
	// Assigned: given to the pod of Unit.Attachment.
	Assigned State = "assigned"
	// Cooling: released by a DEL at Since, waiting out the reuse delay
	// (neighbours' ARP/ND caches may still point at the old pod). The
	// agent's clock, not a write, makes it warm again: the record of a
	// unit released by a DEL stays cooling until it is assigned again.
	Cooling State = "cooling"
)

// Unit is one allocation unit the node holds.
type Unit struct {
	Pool string `json:"pool"`
	// ID is the unit's primary address: its IPv4, or its IPv6 in an
	// IPv6-only pool. Unique within the pool.
	ID   string `json:"id"`
	IPv4 string `json:"ipv4,omitempty"`
	IPv6 string `json:"ipv6,omitempty"`
	// State and, by state, the attachment it is assigned to or when it
	// started cooling.
	State      State     `json:"state"`
	Attachment string    `json:"attachment,omitempty"`
	Since      time.Time `json:"since,omitzero"`
}

// Key identifies a unit across pools.
type Key struct{ Pool, ID string }

// Key returns the unit's key.
func (u Unit) Key() Key { return Key{u.Pool, u.ID} }

// Pod identifies a pod.
type Pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
}

// Same says whether two records name the same pod: by UID when both have
// one, else by namespace and name (a runtime that does not pass
// K8S_POD_UID), as the allocator records pods.
func (p Pod) Same(q Pod) bool {
	if p.UID != "" && q.UID != "" {
		return p.UID == q.UID
	}
	return p.Namespace == q.Namespace && p.Name == q.Name
}

// Assignment is a unit given to a pod's interface.
type Assignment struct {
	// Attachment is "<containerID>/<ifname>", the key ADD is idempotent on.
	Attachment string    `json:"attachment"`
	Pool       string    `json:"pool"`
	UnitID     string    `json:"unitID"`
	Pod        Pod       `json:"pod"`
	Network    string    `json:"network,omitempty"`
	At         time.Time `json:"at"`
}

// Route is a route handed to pods of a pool.
type Route struct {
	Dst string `json:"dst"`
	GW  string `json:"gw,omitempty"`
}

// Pool holds what the agent needs to answer an ADD from a pool without the
// API: prefix lengths, gateways and routes per family.
type Pool struct {
	Name     string  `json:"name"`
	Prefix4  int     `json:"prefix4,omitempty"`
	Prefix6  int     `json:"prefix6,omitempty"`
	Gateway4 string  `json:"gateway4,omitempty"`
	Gateway6 string  `json:"gateway6,omitempty"`
	Routes   []Route `json:"routes,omitempty"`
}

// Snapshot is the whole record, as Load reads it.
type Snapshot struct {
	Epoch       uint64
	Pools       map[string]Pool
	Units       map[Key]Unit
	Assignments map[string]Assignment
}

// Errors callers act on.
var (
	// ErrUnitNotWarm: Assign was asked for a unit that is not free on
	// this node (unknown or assigned).
	ErrUnitNotWarm = errors.New("unit is not warm on this node")
	// ErrAttachmentTaken: Assign was asked for an attachment that already
	// holds a unit.
	ErrAttachmentTaken = errors.New("attachment already holds a unit")
	// ErrFormat: the file is of another format version.
	ErrFormat = errors.New("unsupported store format")
)

var (
	bucketMeta        = []byte("meta")
	bucketPools       = []byte("pools")
	bucketUnits       = []byte("units")
	bucketAssignments = []byte("assignments")
	keyFormat         = []byte("format")
	keyEpoch          = []byte("epoch")
)

// Store is the agent's bbolt file.
type Store struct {
	db     *bolt.DB
	commit committer // Assign and Release, the per-pod writes
}

// Options tune the store. The zero value is what production uses.
type Options struct {
	// NoSync skips fsync on commit. Only for tests and benchmarks that
	// measure everything else: a crash may then lose acknowledged writes.
	NoSync bool
	// ReadOnly opens an existing store to read it (a dead agent's, for a
	// check), writing nothing, creating nothing.
	ReadOnly bool
}

// Open opens or creates the store at path, creating its directory.
func Open(path string, opts Options) (*Store, error) {
	if opts.ReadOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("store %s: %w", path, err)
		}
		db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, ReadOnly: true})
		if err != nil {
			return nil, fmt.Errorf("store %s: %w", path, err)
		}
		err = db.View(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketMeta, bucketPools, bucketUnits, bucketAssignments} {
				if tx.Bucket(b) == nil {
					return fmt.Errorf("no %s bucket: not an agent's store", b)
				}
			}
			if v := tx.Bucket(bucketMeta).Get(keyFormat); string(v) != FormatVersion {
				return fmt.Errorf("%w: file has version %s, this agent reads %s", ErrFormat, v, FormatVersion)
			}
			return nil
		})
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("store %s: %w", path, err)
		}
		return &Store{db: db, commit: committer{db: db}}, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	// NoFreelistSync, as etcd does: a commit does not write the free
	// page list (one page and its share of the fsync per ADD and DEL);
	// opening after a crash rebuilds it by scanning the file, which for
	// a node's record is a few pages.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, NoSync: opts.NoSync, NoFreelistSync: true})
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketPools, bucketUnits, bucketAssignments} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keyFormat); {
		case v == nil:
			return meta.Put(keyFormat, []byte(FormatVersion))
		case string(v) != FormatVersion:
			return fmt.Errorf("%w: file has version %s, this agent reads %s", ErrFormat, v, FormatVersion)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	return &Store{db: db, commit: committer{db: db}}, nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Load reads the whole record.
func (s *Store) Load() (*Snapshot, error) {
	snap := &Snapshot{Pools: map[string]Pool{}, Units: map[Key]Unit{}, Assignments: map[string]Assignment{}}
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyEpoch); len(v) == 8 {
			snap.Epoch = binary.BigEndian.Uint64(v)
		}
		if err := tx.Bucket(bucketPools).ForEach(func(_, v []byte) error {
			var p Pool
			if err := json.Unmarshal(v, &p); err != nil {
				return fmt.Errorf("pool record: %w", err)
			}
			snap.Pools[p.Name] = p
			return nil
		}); err != nil {
			return err
		}
		if err := tx.Bucket(bucketUnits).ForEach(func(_, v []byte) error {
			var u Unit
			if err := json.Unmarshal(v, &u); err != nil {
				return fmt.Errorf("unit record: %w", err)
			}
			snap.Units[u.Key()] = u
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bucketAssignments).ForEach(func(_, v []byte) error {
			var a Assignment
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("assignment record: %w", err)
			}
			snap.Assignments[a.Attachment] = a
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("load store: %w", err)
	}
	return snap, nil
}

// SetEpoch records the highest allocator epoch seen; a lower one is ignored.
// It returns the epoch in force afterwards.
func (s *Store) SetEpoch(epoch uint64) (uint64, error) {
	var cur uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keyEpoch); len(v) == 8 {
			cur = binary.BigEndian.Uint64(v)
		}
		if epoch <= cur {
			return nil
		}
		cur = epoch
		return meta.Put(keyEpoch, binary.BigEndian.AppendUint64(nil, epoch))
	})
	if err != nil {
		return 0, fmt.Errorf("set epoch %d: %w", epoch, err)
	}
	return cur, nil
}

// Grant records a grant: the pool's network parameters (as of the
// grant) and its units, warm on this node, in one transaction shared with
// the commits of concurrent ADDs and DELs (one fsync for them all). A
// unit the node already holds, in any state, is left as it is: grants
// are idempotent, and a grant that crossed the report of an assignment
// must not undo it.
func (s *Store) Grant(p Pool, units []Unit) error {
	for _, u := range units {
		if u.Pool != p.Name {
			return fmt.Errorf("grant of pool %s: unit %s is of pool %s", p.Name, u.ID, u.Pool)
		}
	}
	return s.commit.do(func(tx *bolt.Tx) error {
		if err := putJSON(tx.Bucket(bucketPools), []byte(p.Name), p); err != nil {
			return err
		}
		b := tx.Bucket(bucketUnits)
		for _, u := range units {
			k := unitKey(u.Key())
			if _, ok, err := getUnit(b, k); err != nil {
				return err
			} else if ok {
				continue
			}
			u.State, u.Attachment, u.Since = Warm, "", time.Time{}
			if err := putJSON(b, k, u); err != nil {
				return err
			}
		}
		return nil
	})
}

// Assign records a as made: its unit goes from warm (or cooling: whether
// its reuse delay is over is the agent's to judge) to assigned and the
// assignment is stored, in one transaction. It fails with ErrUnitNotWarm or
// ErrAttachmentTaken and writes nothing if either record disagrees.
func (s *Store) Assign(a Assignment) error {
	err := s.commit.do(func(tx *bolt.Tx) error {
		units, assignments := tx.Bucket(bucketUnits), tx.Bucket(bucketAssignments)
		if v := assignments.Get([]byte(a.Attachment)); v != nil {
			return ErrAttachmentTaken
		}
		k := unitKey(Key{a.Pool, a.UnitID})
		u, ok, err := getUnit(units, k)
		if err != nil {
			return err
		}
		if !ok || u.State == Assigned {
			return ErrUnitNotWarm
		}
		u.State, u.Attachment, u.Since = Assigned, a.Attachment, time.Time{}
		if err := putJSON(units, k, u); err != nil {
			return err
		}
		return putJSON(assignments, []byte(a.Attachment), a)
	})
	if err != nil {
		return fmt.Errorf("assign %s/%s to %s: %w", a.Pool, a.UnitID, a.Attachment, err)
	}
	return nil
}

// Release removes the assignment of attachment and starts its unit cooling
// at now, in one transaction. It returns the assignment, or false when the
// attachment holds nothing (a DEL of the unknown succeeds).
func (s *Store) Release(attachment string, now time.Time) (Assignment, bool, error) {
	var a Assignment
	var found bool
	err := s.commit.do(func(tx *bolt.Tx) error {
		found = false
		units, assignments := tx.Bucket(bucketUnits), tx.Bucket(bucketAssignments)
		v := assignments.Get([]byte(attachment))
		if v == nil {
			return nil
		}
		if err := json.Unmarshal(v, &a); err != nil {
			return fmt.Errorf("assignment record: %w", err)
		}
		found = true
		if err := assignments.Delete([]byte(attachment)); err != nil {
			return err
		}
		k := unitKey(Key{a.Pool, a.UnitID})
		u, ok, err := getUnit(units, k)
		if err != nil {
			return err
		}
		if !ok || u.State != Assigned || u.Attachment != attachment {
			// The unit record moved on (revoked after a crash, say): the
			// assignment is gone either way, and the unit is not ours to cool.
			return nil
		}
		u.State, u.Attachment, u.Since = Cooling, "", now
		return putJSON(units, k, u)
	})
	if err != nil {
		return Assignment{}, false, fmt.Errorf("release %s: %w", attachment, err)
	}
	return a, found, nil
}

// Drop removes units the node gives up (revoked, or not in the
// allocator's lease) and returns those it removed. Assigned units are never
// dropped (they are skipped), nor are unknown ones.
func (s *Store) Drop(keys []Key) ([]Key, error) {
	var dropped []Key
	err := s.db.Update(func(tx *bolt.Tx) error {
		dropped = dropped[:0]
		b := tx.Bucket(bucketUnits)
		for _, key := range keys {
			k := unitKey(key)
			u, ok, err := getUnit(b, k)
			if err != nil {
				return err
			}
			if !ok || u.State == Assigned {
				continue
			}
			if err := b.Delete(k); err != nil {
				return err
			}
			dropped = append(dropped, key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("drop: %w", err)
	}
	return dropped, nil
}

// Void removes units in any state, with the assignments that hold them,
// and returns the assignments removed: the allocator found them held by
// another node (reclaimed while this node was lost, their pods gone). A
// unit assigned to an attachment not in attachments (the caller holds
// those attachments' locks) is kept, and returned in kept.
func (s *Store) Void(keys []Key, attachments []string) (voided []Assignment, kept []Key, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		voided, kept = voided[:0], kept[:0]
		units, assignments := tx.Bucket(bucketUnits), tx.Bucket(bucketAssignments)
		for _, key := range keys {
			k := unitKey(key)
			u, ok, err := getUnit(units, k)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			if u.State == Assigned {
				if !slices.Contains(attachments, u.Attachment) {
					kept = append(kept, key)
					continue
				}
				if v := assignments.Get([]byte(u.Attachment)); v != nil {
					var a Assignment
					if err := json.Unmarshal(v, &a); err != nil {
						return fmt.Errorf("assignment record: %w", err)
					}
					if a.UnitID == key.ID && a.Pool == key.Pool {
						if err := assignments.Delete([]byte(u.Attachment)); err != nil {
							return err
						}
						voided = append(voided, a)
					}
				}
			}
			if err := units.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("void: %w", err)
	}
	return voided, kept, nil
}

func unitKey(k Key) []byte { return []byte(k.Pool + "\x00" + k.ID) }

func getUnit(b *bolt.Bucket, k []byte) (Unit, bool, error) {
	v := b.Get(k)
	if v == nil {
		return Unit{}, false, nil
	}
	var u Unit
	if err := json.Unmarshal(v, &u); err != nil {
		return Unit{}, false, fmt.Errorf("unit record %q: %w", k, err)
	}
	return u, true, nil
}

func putJSON(b *bolt.Bucket, k []byte, v any) error {
	buf, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, buf)
}
