// Package inspect is the logic of the operator CLI (cmd/kubectl-warmpool):
// it reads the three records warmpool keeps of every address (the
// allocator's NodeLeases and pool status, each agent's bbolt record as its
// /state endpoint serves it, and the pods' reported addresses), and
// compares them.
//
// The package has two halves. Gather reads a Snapshot from the apiserver
// and the agents (through the apiserver's pod proxy, or at URLs given on
// the command line); it is the only code that does I/O. Everything else is
// a pure function of a Snapshot (Pools, Nodes, Where, Leases, Doctor),
// tested with snapshots built in code. The cross-checks the fault suite
// shares (SharedLeaseUnits, SharedAgentUnits, CompareHoldings) live here
// so that the CLI and internal/rig/faults apply the same rules.
package inspect
