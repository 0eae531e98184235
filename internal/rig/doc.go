// Package rig is the root of what tests and the benchmark run on, and of
// the suites that run on it; nothing below it ships in a binary but the
// benchmark's. Beside it, internal/ holds the code the binaries share.
//
//   - toolchain builds the real components (etcd, Kubernetes, the CNI
//     plugins, controller-gen) from the Go module proxy into a cache
//     outside the clone;
//   - child runs them as child processes, controlplane as a local cluster,
//     netsim gives nodes and pods network namespaces, testenv hands all of
//     it to tests (failing, not skipping, under CI=true);
//   - metricsdoc holds the docs to what the code registers and accepts;
//   - e2e and faults are the end-to-end suite and the fault suite.
package rig
