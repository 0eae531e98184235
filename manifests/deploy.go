package manifests

import (
	"embed"
	"io/fs"
	"path"
	"slices"
)

// kustomizeFiles is the tree `kubectl apply -k` reads: the install's
// kustomizations in deploy/, and crds/ and rbac/, which deploy/base
// includes as kustomizations of their own.
//
//go:embed deploy crds rbac
var kustomizeFiles embed.FS

// KustomizeFS returns deploy/, crds/ and rbac/ as shipped, for a
// kustomize build of the install (deploy/base, deploy/overlays/*).
func KustomizeFS() fs.FS { return kustomizeFiles }

// Kustomizations returns the directories of deploy/ that hold a
// kustomization.yaml (the base and each overlay), sorted.
func Kustomizations() ([]string, error) {
	var dirs []string
	err := fs.WalkDir(kustomizeFiles, "deploy", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() == "kustomization.yaml" {
			dirs = append(dirs, path.Dir(p))
		}
		return nil
	})
	slices.Sort(dirs)
	return dirs, err
}
