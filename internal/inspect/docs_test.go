package inspect

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDocsListEveryFinding: docs/cli.md's table of findings names every
// kind the doctor reports, with its severity, and no kind it does not
// report (one removed from the code must leave the docs too).
func TestDocsListEveryFinding(t *testing.T) {
	b, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for k, v := range kinds {
		if !strings.Contains(doc, "| `"+k+"` | "+string(v.severity)+" |") {
			t.Errorf("docs/cli.md has no row for %s (%s)", k, v.severity)
		}
	}
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z-]+)` \\| (?:error|warning) \\|").FindAllStringSubmatch(doc, -1) {
		if _, ok := kinds[m[1]]; !ok {
			t.Errorf("docs/cli.md lists %s, which the doctor does not report", m[1])
		}
	}
}
