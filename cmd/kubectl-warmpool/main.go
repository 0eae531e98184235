// Command kubectl-warmpool is warmpool's operator CLI, a kubectl plugin
// (`kubectl warmpool pools|nodes|where|leases|doctor`): it reads the
// allocator's records, the agents' and the pods, and compares them.
// docs/cli.md describes it; the command line is in internal/inspect/cli, the logic in internal/inspect.
package main

import (
	"os"

	"github.com/warmpool/warmpool/internal/inspect/cli"
)

func main() {
	os.Exit(cli.Run(os.Args[1:], os.Stdout, os.Stderr))
}
