package manifests

import (
	"embed"
	"io/fs"
	"path"
)

// dashboardFiles are the Grafana dashboards, embedded so that the test
// that holds them to docs/metrics.md reads the files that are shipped.
//
//go:embed dashboards/*.json
var dashboardFiles embed.FS

// Dashboards returns each Grafana dashboard of dashboards/ by file name
// (warmpool.json: the one docs/operator-guide.md describes).
func Dashboards() (map[string][]byte, error) {
	names, err := fs.Glob(dashboardFiles, "dashboards/*.json")
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(names))
	for _, name := range names {
		b, err := dashboardFiles.ReadFile(name)
		if err != nil {
			return nil, err
		}
		out[path.Base(name)] = b
	}
	return out, nil
}
