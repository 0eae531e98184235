package inspect

import (
	"os"
	"strings"
	"testing"
)

// TestDocsListEveryFinding: docs/cli.md's table of findings names every
// kind the doctor reports, with its severity.
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
}
