package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/yaml"

	"github.com/warmpool/warmpool/internal/rig/gobuild"
	"github.com/warmpool/warmpool/internal/rig/toolchain"
	"github.com/warmpool/warmpool/manifests"
)

// Kubectl runs the node's kubectl as the cluster's admin, with stdin if
// not nil, and returns its output; an error carries its stderr.
func (n *Node) Kubectl(ctx context.Context, stdin io.Reader, args ...string) ([]byte, error) {
	bin, err := n.binary(toolchain.Kube, "kube")
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"kubectl", "--kubeconfig", n.cp.Kubeconfig()}, args...)...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// InstallMultusCRD creates the NetworkAttachmentDefinition CRD, which a
// Multus install brings (the node runs Multus's plugin, not its
// DaemonSet), and waits until it is served.
func (n *Node) InstallMultusCRD(ctx context.Context) error {
	root, err := gobuild.ModuleRoot()
	if err != nil {
		return err
	}
	crd := filepath.Join(root, "manifests", "testdata", "network-attachment-definitions.crd.yaml")
	if _, err := n.Kubectl(ctx, nil, "apply", "-f", crd); err != nil {
		return err
	}
	_, err = n.Kubectl(ctx, nil, "wait", "--for=condition=Established", "--timeout=60s", "crd/network-attachment-definitions.k8s.cni.cncf.io")
	return err
}

// InstallWarmpool installs warmpool as a user does: `kubectl apply -k`
// of an overlay of the shipped base (manifests/deploy/base, as embedded)
// that sets only the macvlan master of the network config the agents
// install, to the node's underlay link. It returns once the CRDs are
// served; the caller waits for the rollout.
func (n *Node) InstallWarmpool(ctx context.Context) error {
	dir := filepath.Join(n.dir, "install")
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if err := os.CopyFS(filepath.Join(dir, "manifests"), manifests.KustomizeFS()); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	overlay := filepath.Join(dir, "overlay")
	if err := writeOverlay(overlay, UnderlayLink); err != nil {
		return err
	}
	if _, err := n.Kubectl(ctx, nil, "apply", "-k", overlay); err != nil {
		return err
	}
	_, err := n.Kubectl(ctx, nil, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/ippools.warmpool.io", "crd/nodeleases.warmpool.io")
	return err
}

// conflistFile is the base's network config, in deploy/base/cni and in
// the ConfigMap that kustomize generates from it.
const conflistFile = "warmpool-underlay.conflist"

// writeOverlay writes a kustomization over ../manifests/deploy/base that
// replaces the generated network config with the base's, its macvlan
// plugin given master.
func writeOverlay(dir, master string) error {
	b, err := fs.ReadFile(manifests.KustomizeFS(), "deploy/base/cni/"+conflistFile)
	if err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	var all map[string]json.RawMessage
	var plugins []map[string]any
	if err := json.Unmarshal(b, &all); err != nil {
		return fmt.Errorf("overlay: %s: %w", conflistFile, err)
	}
	if err := json.Unmarshal(all["plugins"], &plugins); err != nil {
		return fmt.Errorf("overlay: %s: plugins: %w", conflistFile, err)
	}
	set := false
	for _, p := range plugins {
		if p["type"] == "macvlan" {
			p["master"] = master
			set = true
		}
	}
	if !set {
		return fmt.Errorf("overlay: %s has no macvlan plugin", conflistFile)
	}
	if all["plugins"], err = json.Marshal(plugins); err != nil {
		return err
	}
	out, err := json.MarshalIndent(all, "", "  ")
	if err != nil {
		return err
	}
	k := types.Kustomization{
		TypeMeta:  types.TypeMeta{APIVersion: types.KustomizationVersion, Kind: types.KustomizationKind},
		Resources: []string{"../manifests/deploy/base"},
		ConfigMapGenerator: []types.ConfigMapArgs{{GeneratorArgs: types.GeneratorArgs{
			Name:          "warmpool-cni",
			Namespace:     "kube-system",
			Behavior:      "replace",
			KvPairSources: types.KvPairSources{FileSources: []string{conflistFile}},
		}}},
	}
	ky, err := yaml.Marshal(k)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, conflistFile), out, 0o644); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, "kustomization.yaml"), ky, 0o644)
}

// ShippedImages returns the images the shipped base runs, by the names
// its kustomization's images field gives them (image name, then
// newName:newTag): what a node must hold for IfNotPresent to pull
// nothing.
func ShippedImages() (map[string]string, error) {
	b, err := fs.ReadFile(manifests.KustomizeFS(), "deploy/base/kustomization.yaml")
	if err != nil {
		return nil, err
	}
	var k types.Kustomization
	if err := yaml.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("deploy/base/kustomization.yaml: %w", err)
	}
	out := map[string]string{}
	for _, img := range k.Images {
		if img.NewName == "" || img.NewTag == "" {
			return nil, fmt.Errorf("deploy/base/kustomization.yaml: image %s has no newName or newTag", img.Name)
		}
		out[img.Name] = img.NewName + ":" + img.NewTag
	}
	return out, nil
}
