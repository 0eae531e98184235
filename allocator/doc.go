// Package allocator is the leader-elected cluster controller: the single
// source of truth for which node holds which unit of each IPPool. It
// enumerates pools' units, persists each node's holdings in its NodeLease
// before it pushes them to the node's agent, serves the agents' cache
// misses and records the assignments they report.
package allocator
