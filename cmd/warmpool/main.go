// Command warmpool is the IPAM plugin binary the container runtime execs
// from its CNI bin directory. It forwards each exec to the node agent
// (cni/shim); the agent does the work.
package main

import (
	"os"

	"github.com/warmpool/warmpool/cni/shim"
)

func main() {
	os.Exit(shim.Main(os.Getenv, os.Stdin, os.Stdout, os.Stderr))
}
