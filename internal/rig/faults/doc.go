// Package faults is the fault suite: seeded scenarios that churn pods on
// the real components (apiserver and etcd, two allocator processes under
// leader election, NATS, one agent process per node, the plugin exec'd
// through libcni) while they kill, freeze, partition, restart and delete
// them, and a checker that watches every source of truth for the
// invariants of docs/invariants.md. A failure names its seed and writes the
// event log that led to it.
package faults
