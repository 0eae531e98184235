package node

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/warmpool/warmpool/manifests"
)

// TestTheOverlaySetsOnlyTheMaster: the node installs the shipped base
// through an overlay that changes one thing a user sets, the macvlan
// master in the agents' network config; every other object is the
// base's, byte for byte.
func TestTheOverlaySetsOnlyTheMaster(t *testing.T) {
	dir := t.TempDir()
	if err := os.CopyFS(filepath.Join(dir, "manifests"), manifests.KustomizeFS()); err != nil {
		t.Fatal(err)
	}
	if err := writeOverlay(filepath.Join(dir, "overlay"), "uplink7"); err != nil {
		t.Fatal(err)
	}
	build := func(path string) resmap.ResMap {
		t.Helper()
		res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), path)
		if err != nil {
			t.Fatalf("kustomize build %s: %v", path, err)
		}
		return res
	}
	base, overlay := build(filepath.Join(dir, "manifests", "deploy", "base")), build(filepath.Join(dir, "overlay"))
	if base.Size() != overlay.Size() {
		t.Fatalf("the overlay has %d objects, the base %d", overlay.Size(), base.Size())
	}
	// The generated ConfigMap's name carries a hash of its data, and the
	// DaemonSet names it: both differ by that name only, apart from the
	// config itself.
	baseCM, overlayCM := configName(base), configName(overlay)
	if baseCM == "" || overlayCM == "" || baseCM == overlayCM {
		t.Fatalf("config maps %q and %q: want two generated names", baseCM, overlayCM)
	}
	for i, o := range overlay.Resources() {
		b := base.Resources()[i]
		if o.GetKind() == "ConfigMap" && strings.HasPrefix(o.GetName(), "warmpool-cni") {
			var got, want map[string]any
			if err := json.Unmarshal([]byte(o.GetDataMap()[conflistFile]), &got); err != nil {
				t.Fatalf("overlay's %s: %v", conflistFile, err)
			}
			if err := json.Unmarshal([]byte(b.GetDataMap()[conflistFile]), &want); err != nil {
				t.Fatalf("base's %s: %v", conflistFile, err)
			}
			want["plugins"].([]any)[0].(map[string]any)["master"] = "uplink7"
			gb, _ := json.Marshal(got)
			wb, _ := json.Marshal(want)
			if string(gb) != string(wb) {
				t.Errorf("overlay's config\n%s\nwant\n%s", gb, wb)
			}
			continue
		}
		ob, err := o.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		bb, err := b.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		if o.GetKind() == "DaemonSet" {
			bb = []byte(strings.ReplaceAll(string(bb), baseCM, overlayCM))
		}
		if string(ob) != string(bb) {
			t.Errorf("%s %s differs from the base's:\n%s\nbase:\n%s", o.GetKind(), o.GetName(), ob, bb)
		}
	}
}

// configName is the generated name of the agents' network config.
func configName(m resmap.ResMap) string {
	for _, r := range m.Resources() {
		if r.GetKind() == "ConfigMap" && strings.HasPrefix(r.GetName(), "warmpool-cni") {
			return r.GetName()
		}
	}
	return ""
}

func TestShippedImagesAreTheBasesImages(t *testing.T) {
	imgs, err := ShippedImages()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"warmpool-agent", "warmpool-allocator"} {
		if !strings.HasSuffix(strings.Split(imgs[name], ":")[0], "/"+name) {
			t.Errorf("image %s is %q", name, imgs[name])
		}
	}
}
