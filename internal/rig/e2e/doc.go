// Package e2e holds the end-to-end tests of the data path: a real
// apiserver and etcd, an embedded NATS server, the allocator, one agent per
// simulated node, and the real plugin binary exec'd through libcni behind
// the real macvlan plugin into pod network namespaces.
package e2e
