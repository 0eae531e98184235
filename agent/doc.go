// Package agent will hold the per-node daemon: it serves the CNI socket, owns
// the node's warm cache and its durable bbolt record of leases and
// assignments, watches the pods of its node and recycles released addresses.
// Nothing is implemented yet; see docs/architecture.md for the plan.
package agent
