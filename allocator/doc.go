// Package allocator will hold the leader-elected cluster controller: the
// source of truth for which node holds which address of each IPPool, which
// it persists in NodeLeases before pushing them to agents over the bus.
// Nothing is implemented yet; see docs/architecture.md for the plan.
package allocator
