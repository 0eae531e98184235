// Package cni will hold the IPAM plugin the container runtime execs (type
// "warmpool" in the ipam section). It will talk only to the node agent over
// a unix socket. Nothing is implemented yet; see docs/architecture.md.
package cni
