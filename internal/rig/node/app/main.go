// Command app is the one program of a real test node's images: the
// sandbox's pause container and the test pods' workload (no arguments:
// sleep until SIGTERM or SIGINT), and, run with `addrs` through
// `kubectl exec`, a report of the pod's interfaces and their addresses
// as JSON, read inside the pod's network namespace as a workload would
// see them.
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
)

// Interface is one line of `app addrs`.
type Interface struct {
	Name  string   `json:"name"`
	Addrs []string `json:"addrs"`
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "addrs" {
		if err := addrs(); err != nil {
			fmt.Fprintln(os.Stderr, "app addrs:", err)
			os.Exit(1)
		}
		return
	}
	// A pause container reaps what it is given as PID 1, and exits on
	// the runtime's SIGTERM.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGCHLD)
	<-sig
}

func addrs() error {
	ifs, err := net.Interfaces()
	if err != nil {
		return err
	}
	out := []Interface{}
	for _, i := range ifs {
		as, err := i.Addrs()
		if err != nil {
			return fmt.Errorf("%s: %w", i.Name, err)
		}
		row := Interface{Name: i.Name, Addrs: []string{}}
		for _, a := range as {
			row.Addrs = append(row.Addrs, a.String())
		}
		out = append(out, row)
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
