package logkey

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// keys are the log keys the components may use. The shared ones (the
// package comment's) are what operators filter on; the others say what
// one kind of line is about. A new key goes here, after a look for an
// existing one that means the same.
var keys = map[string]string{
	// shared: docs/operator-guide.md, "Reading the logs"
	"pod":        "namespace/name (Pod)",
	"pod_uid":    "the pod's UID",
	"node":       "a node's name",
	"pool":       "an IPPool's name",
	"address":    "a unit's addresses (Address)",
	"epoch":      "a leader epoch",
	"attachment": "containerID/ifname",
	"err":        "the error",

	// what a line is about
	"asked":       "a number of units asked for",
	"assignments": "a number of assignments",
	"body_node":   "the node a refused request's body names",
	"bound":       "a number of pods bound to a node without an address",
	"code":        "a CNI error code",
	"component":   "the part of a process logging (nats, nats-auth)",
	"credential":  "a bus credential's name",
	"expires":     "when a credential expires",
	"failpoint":   "the armed failpoint",
	"fence":       "when a node's agent stopped using units at the latest",
	"for_node":    "the node a revoke makes room for",
	"free":        "a number of free units",
	"gen":         "a NodeLease generation",
	"got":         "a number of units obtained",
	"grant":       "units a planning round grants a node",
	"hit":         "whether an ADD was a cache hit",
	"identity":    "the allocator's leader-election identity",
	"kept":        "a number of units kept",
	"lease":       "a NodeLease's name",
	"lease_epoch": "the epoch a NodeLease was written at",
	"leases":      "a number of NodeLeases",
	"listed_gen":  "the NodeLease generation of the last sync reply an agent applied",
	"listen":      "an address a server listens on",
	"max_procs":   "GOMAXPROCS: how many threads run a process's Go code at once",
	"name":        "a bus client's name",
	"nats":        "the bus's URL",
	"network":     "a CNI network's name",
	"newer_epoch": "the epoch that deposed this allocator",
	"op":          "a CNI operation",
	"pods":        "a number of pods",
	"pools":       "a number of pools",
	"reason":      "why something was refused",
	"recent":      "the ADDs a node's recent rate predicts for the next window",
	"remote":      "a bus client's address",
	"retry_in":    "when a failed step is tried again",
	"revoke":      "units a planning round takes back from a node",
	"run":         "an agent process's run ID",
	"seq":         "a report's or sync's sequence number",
	"share":       "the units a node may hold after a planning round",
	"since":       "since when",
	"socket":      "the CNI socket's path",
	"state":       "the agent's bbolt file",
	"subject":     "a bus subject",
	"target":      "a node's warm target before scarcity",
	"unbound":     "a number of pending pods not bound to a node",
	"units":       "a number of units",
	"user":        "a bus user",
	"warm":        "a number of warm units",
}

// synonyms are spellings that were used for a shared key.
var synonyms = map[string]string{
	"unit": "address", "unit_id": "address", "ip": "address", "addr": "address", "ips": "address",
	"donor": "node", "to": "node", "subject_node": "node", "node_name": "node",
	"pod_name": "pod", "namespace": "pod", "container": "attachment", "container_id": "attachment",
	"error": "err", "leader_epoch": "epoch",
}

// TestLogKeys: every key of every log call in the components is one of
// keys, so that one thing is spelt one way (a pod is "pod", never
// "pod_name"; a unit's addresses are "address", never "unit" or "ip").
func TestLogKeys(t *testing.T) {
	root := "../.."
	used := map[string]bool{}
	for _, dir := range []string{"agent", "allocator", "broker", "cni", "cmd", "internal/metrics"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			for _, k := range logKeys(t, path) {
				used[k.key] = true
				if right, ok := synonyms[k.key]; ok {
					t.Errorf("%s: log key %q: spell it %q", k.pos, k.key, right)
				} else if _, ok := keys[k.key]; !ok {
					t.Errorf("%s: log key %q is not among the keys of internal/logkey's test", k.pos, k.key)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"pod", "node", "pool", "address", "epoch", "attachment"} {
		if !used[k] {
			t.Errorf("no log line uses %q: the scan is broken", k)
		}
	}
	// Keys nobody uses any more leave the list.
	for k := range keys {
		if !used[k] {
			t.Errorf("key %q is used by no log line: remove it", k)
		}
	}
	guide, err := os.ReadFile(filepath.Join(root, "docs", "operator-guide.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"pod", "pod_uid", "node", "pool", "address", "epoch", "attachment", "err", "code"} {
		if !strings.Contains(string(guide), "`"+k+"`") {
			t.Errorf("docs/operator-guide.md does not document the log field `%s`", k)
		}
	}
}

type keyUse struct {
	key string
	pos token.Position
}

// logMethods are slog.Logger's methods whose arguments from the index
// given are key-value pairs (after the message; With: all; Log: after the
// context, the level and the message).
var logMethods = map[string]int{"Debug": 1, "Info": 1, "Warn": 1, "Error": 1, "With": 0, "Log": 3}

// logKeys finds the constant keys of the log calls in a file: calls of
// logMethods on a receiver whose name says it is a logger, and slog.Attr
// constructors.
func logKeys(t *testing.T, path string) []keyUse {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []keyUse
	literal := func(e ast.Expr) (string, bool) {
		bl, ok := e.(*ast.BasicLit)
		if !ok || bl.Kind != token.STRING {
			return "", false
		}
		s, err := strconv.Unquote(bl.Value)
		return s, err == nil
	}
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		if x, ok := sel.X.(*ast.Ident); ok && x.Name == "slog" {
			// slog.String("key", v), slog.Any(...), ...
			if len(call.Args) > 0 && slices.Contains([]string{"String", "Int", "Int64", "Uint64", "Float64", "Bool", "Time", "Duration", "Any", "Group"}, sel.Sel.Name) {
				if k, ok := literal(call.Args[0]); ok {
					out = append(out, keyUse{k, fset.Position(call.Pos())})
				}
			}
			return true
		}
		first, ok := logMethods[sel.Sel.Name]
		if !ok || !isLogger(sel.X) {
			return true
		}
		for i := first; i < len(call.Args); i += 2 {
			if k, ok := literal(call.Args[i]); ok {
				out = append(out, keyUse{k, fset.Position(call.Args[i].Pos())})
			} else if _, isCall := call.Args[i].(*ast.CallExpr); isCall {
				i-- // an Attr: a pair in one argument (checked above)
			}
		}
		return true
	})
	return out
}

// isLogger: the receiver's last name is log, logger or Logger (a.log,
// s.agent.log, log, a.Logger): the components' convention.
func isLogger(e ast.Expr) bool {
	var name string
	switch x := e.(type) {
	case *ast.Ident:
		name = x.Name
	case *ast.SelectorExpr:
		name = x.Sel.Name
	case *ast.CallExpr:
		// log.With(...).Info(...)
		if sel, ok := x.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "With" {
			return isLogger(sel.X)
		}
	}
	return slices.Contains([]string{"log", "logger", "Logger"}, name)
}

func TestPodAndAddress(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{Pod("default", "web-0"), "default/web-0"},
		{Pod("", ""), ""},
		{Address("10.0.0.5", "fd00::5"), "10.0.0.5,fd00::5"},
		{Address("10.0.0.5", ""), "10.0.0.5"},
		{Address("", "fd00::5"), "fd00::5"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}
