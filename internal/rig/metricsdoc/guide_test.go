package metricsdoc

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/internal/rig/gobuild"
)

// The operator's guide names flags, CNI error codes, metrics and alert
// expressions; an operator acts on them at 3 a.m., so each must exist.
// These tests hold docs/operator-guide.md to the code.

func readGuide(t *testing.T) (string, []string) {
	t.Helper()
	root, err := gobuild.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "docs", "operator-guide.md"))
	if err != nil {
		t.Fatal(err)
	}
	// Prose and tables only: shell blocks hold kubectl's and openssl's
	// flags too.
	var prose []string
	fenced := false
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			fenced = !fenced
			continue
		}
		if !fenced {
			prose = append(prose, l)
		}
	}
	return string(b), prose
}

// walkSources calls visit on every node of the non-test Go files that
// patterns (globs under root) match.
func walkSources(t *testing.T, root string, patterns []string, visit func(path string, n ast.Node)) {
	t.Helper()
	for _, pattern := range patterns {
		files, err := filepath.Glob(filepath.Join(root, pattern))
		if err != nil {
			t.Fatal(err)
		}
		for _, path := range files {
			if strings.HasSuffix(path, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				visit(path, n)
				return true
			})
		}
	}
}

// definedFlags are the flags the agent and the allocator define: the
// first string argument of flag.String, fs.StringVar and their kin.
func definedFlags(t *testing.T, root string) map[string]bool {
	t.Helper()
	defining := []string{"String", "Bool", "Duration", "Int", "Float64", "StringVar", "BoolVar", "DurationVar", "IntVar", "Float64Var"}
	out := map[string]bool{}
	walkSources(t, root, []string{"cmd/warmpool-agent/*.go", "cmd/warmpool-allocator/*.go", "broker/clientauth.go"}, func(_ string, n ast.Node) {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok || !slices.Contains(defining, sel.Sel.Name) {
			return
		}
		for _, a := range call.Args {
			if bl, ok := a.(*ast.BasicLit); ok && bl.Kind == token.STRING {
				if s, err := strconv.Unquote(bl.Value); err == nil {
					out[s] = true
				}
				break
			}
		}
	})
	return out
}

var flagRef = regexp.MustCompile("`--([a-z][a-z0-9-]*)")

// TestOperatorGuideFlagsExist: every --flag the guide's prose and tables
// name is one the agent or the allocator defines.
func TestOperatorGuideFlagsExist(t *testing.T) {
	root, err := gobuild.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	flags := definedFlags(t, root)
	if !flags["reuse-delay"] || !flags["node-loss-grace"] || !flags["nats-ca-file"] {
		t.Fatalf("the flag scan is broken: %v", flags)
	}
	_, prose := readGuide(t)
	n := 0
	for _, l := range prose {
		for _, m := range flagRef.FindAllStringSubmatch(l, -1) {
			n++
			if !flags[m[1]] {
				t.Errorf("docs/operator-guide.md names --%s, which neither warmpool-agent nor warmpool-allocator defines", m[1])
			}
		}
	}
	if n == 0 {
		t.Error("no flag found in the guide: the scan is broken")
	}
}

// codeNames are the CNI error codes the plugin and the agent may return,
// by the names the code uses for them.
var codeNames = map[string]uint{
	"CodeIncompatible": wire.CodeIncompatible, "CodeUnknownContainer": wire.CodeUnknownContainer,
	"CodeInvalidEnv": wire.CodeInvalidEnv, "CodeIOFailure": wire.CodeIOFailure, "CodeDecoding": wire.CodeDecoding,
	"CodeInvalidConfig": wire.CodeInvalidConfig, "CodeTryAgainLater": wire.CodeTryAgainLater,
	"CodeNotAvailable": wire.CodeNotAvailable, "CodeInternal": wire.CodeInternal, "CodeUnknownPool": wire.CodeUnknownPool,
	"CodeNoPool": wire.CodeNoPool, "CodePoolExhausted": wire.CodePoolExhausted, "CodePodNotFound": wire.CodePodNotFound,
	"CodeMissTimeout": wire.CodeMissTimeout, "CodeCheckMismatch": wire.CodeCheckMismatch,
	"ErrIncompatibleCNIVersion": types.ErrIncompatibleCNIVersion, "ErrUnsupportedField": types.ErrUnsupportedField,
	"ErrUnknownContainer": types.ErrUnknownContainer, "ErrInvalidEnvironmentVariables": types.ErrInvalidEnvironmentVariables,
	"ErrIOFailure": types.ErrIOFailure, "ErrDecodingFailure": types.ErrDecodingFailure,
	"ErrInvalidNetworkConfig": types.ErrInvalidNetworkConfig, "ErrInvalidNetNS": types.ErrInvalidNetNS,
	"ErrTryAgainLater": types.ErrTryAgainLater, "ErrPluginNotAvailable": types.ErrPluginNotAvailable,
	"ErrLimitedConnectivity": types.ErrLimitedConnectivity,
	"ErrInternal":            types.ErrInternal,
}

// returnedCodes are the codes the agent's and the plugin's code refer to
// (wire.Code*, and types.Err* in the agent's CNI layer), outside tests.
func returnedCodes(t *testing.T, root string) map[uint]bool {
	t.Helper()
	out := map[uint]bool{}
	walkSources(t, root, []string{"agent/*.go", "cni/*.go", "cni/shim/*.go"}, func(path string, n ast.Node) {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return
		}
		x, ok := sel.X.(*ast.Ident)
		// types.Error is the error type, not a code.
		if !ok || sel.Sel.Name == "Error" || !(x.Name == "wire" && strings.HasPrefix(sel.Sel.Name, "Code") || x.Name == "types" && strings.HasPrefix(sel.Sel.Name, "Err")) {
			return
		}
		code, known := codeNames[sel.Sel.Name]
		if !known {
			t.Errorf("%s: %s.%s is not in this test's codeNames: add it", path, x.Name, sel.Sel.Name)
			return
		}
		out[code] = true
	})
	return out
}

var codeRow = regexp.MustCompile(`^\| (\d+) \|`)

// TestOperatorGuideCoversEveryCNIError: every code the agent or the
// plugin can return has a row in the guide's table of CNI errors, and
// every row's code is one they return.
func TestOperatorGuideCoversEveryCNIError(t *testing.T) {
	root, err := gobuild.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	returned := returnedCodes(t, root)
	if !returned[wire.CodeMissTimeout] || !returned[uint(types.ErrTryAgainLater)] {
		t.Fatalf("the code scan is broken: %v", returned)
	}
	_, prose := readGuide(t)
	documented := map[uint]bool{}
	for _, l := range prose {
		if m := codeRow.FindStringSubmatch(l); m != nil {
			c, _ := strconv.ParseUint(m[1], 10, 32)
			documented[uint(c)] = true
		}
	}
	for c := range returned {
		if !documented[c] {
			t.Errorf("code %d can be returned but has no row in docs/operator-guide.md's table of CNI errors", c)
		}
	}
	for c := range documented {
		if !returned[c] {
			t.Errorf("docs/operator-guide.md documents code %d, which neither the agent nor the plugin returns", c)
		}
	}
}

// TestOperatorGuideMetricsAndAlerts: every metric the guide names is in
// docs/metrics.md (and so registered: TestMetricsAreDocumented), and
// every alert expression passes the dashboard's checks.
func TestOperatorGuideMetricsAndAlerts(t *testing.T) {
	doc, err := ReadDoc()
	if err != nil {
		t.Fatal(err)
	}
	text, prose := readGuide(t)
	for _, name := range regexp.MustCompile(`warmpool_[a-z0-9_]+`).FindAllString(text, -1) {
		if _, _, ok := doc.resolve(strings.TrimSuffix(name, "_")); !ok {
			t.Errorf("docs/operator-guide.md names %s, which docs/metrics.md does not list", name)
		}
	}
	inAlerts, alerts := false, 0
	for _, l := range prose {
		switch {
		case strings.HasPrefix(l, "| alert | expression |"):
			inAlerts = true
			continue
		case !strings.HasPrefix(l, "|"):
			inAlerts = false
		}
		if !inAlerts || strings.HasPrefix(l, "| ---") {
			continue
		}
		cells := strings.Split(strings.ReplaceAll(l, `\|`, "\x00"), "|")
		m := backticked.FindStringSubmatch(cells[2])
		if m == nil {
			t.Errorf("an alert without an expression: %s", l)
			continue
		}
		alerts++
		for _, err := range doc.CheckExpr(strings.ReplaceAll(m[1], "\x00", "|")) {
			t.Errorf("alert %q: %v", strings.TrimSpace(cells[1]), err)
		}
	}
	if alerts < 5 {
		t.Errorf("found %d alerts in the guide: the scan is broken", alerts)
	}
}
