// Package install puts the warmpool plugin binary and a network config on a
// node: what the agent DaemonSet's init container runs (`warmpool-agent
// install-cni`), in Go because the distroless image has no shell.
//
// Both files are replaced atomically: the new content is written to a
// temporary file in the target directory, synced, and renamed over the old
// one. A runtime may exec the plugin or read the config at any moment; it
// sees the old file or the new one, never a partial one, and the running
// plugin keeps its inode, so the write never meets "text file busy".
//
// The config is validated before anything is written: a broken ConfigMap
// fails the init container with a message that names the problem, rather
// than reaching the runtime (or Multus, which stops reading its directory
// at the first file it cannot parse) and breaking every pod of the node.
package install

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"

	"github.com/warmpool/warmpool/cni"
)

// PluginName is the file name of the plugin in the CNI bin directory: the
// runtime execs the binary named by the ipam section's type.
const PluginName = cni.PluginType

// Modes of the installed files: the runtime (root) execs the plugin; the
// config holds no secret.
const (
	pluginMode = 0o755
	confMode   = 0o644
)

// Options say what to install where.
type Options struct {
	// Plugin is the warmpool plugin binary to install (in the image).
	Plugin string
	// BinDir is the host's CNI bin directory (mounted), e.g. /opt/cni/bin.
	BinDir string
	// Conf is the network config to install: a .conflist, or a single
	// plugin's .conf / .json.
	Conf string
	// ConfDir is where the config goes, under Conf's base name.
	ConfDir string
}

// Result says what Install did.
type Result struct {
	Plugin, Conf string // the installed paths
	// PluginChanged and ConfChanged are false when the target already had
	// the same content (nothing was written).
	PluginChanged, ConfChanged bool
}

// Install validates o.Conf, then installs the plugin and the config.
func Install(o Options) (Result, error) {
	if o.Plugin == "" || o.BinDir == "" || o.Conf == "" || o.ConfDir == "" {
		return Result{}, errors.New("--plugin, --bin-dir, --conf and --conf-dir are all required")
	}
	conf, err := os.ReadFile(o.Conf)
	if err != nil {
		return Result{}, fmt.Errorf("read the network config: %w", err)
	}
	if err := ValidateConfig(filepath.Base(o.Conf), conf); err != nil {
		return Result{}, fmt.Errorf("network config %s: %w", o.Conf, err)
	}
	info, err := os.Stat(o.Plugin)
	if err != nil {
		return Result{}, fmt.Errorf("the plugin binary: %w", err)
	}
	if !info.Mode().IsRegular() {
		return Result{}, fmt.Errorf("the plugin binary %s is not a regular file", o.Plugin)
	}
	plugin, err := os.ReadFile(o.Plugin)
	if err != nil {
		return Result{}, fmt.Errorf("read the plugin binary: %w", err)
	}
	r := Result{Plugin: filepath.Join(o.BinDir, PluginName), Conf: filepath.Join(o.ConfDir, filepath.Base(o.Conf))}
	// The plugin first: a config that names a plugin not yet installed
	// would fail every ADD that reads it meanwhile.
	if r.PluginChanged, err = replace(r.Plugin, plugin, pluginMode); err != nil {
		return r, fmt.Errorf("install the plugin: %w", err)
	}
	if r.ConfChanged, err = replace(r.Conf, conf, confMode); err != nil {
		return r, fmt.Errorf("install the network config: %w", err)
	}
	return r, nil
}

// ValidateConfig checks a network config as libcni reads it (name is the
// file's name: a .conflist is a list, anything else one plugin's config):
// it must parse, name a CNI version the warmpool plugin speaks, and give
// at least one plugin an ipam section of type warmpool that the plugin
// accepts.
func ValidateConfig(name string, b []byte) error {
	var plugins []*libcni.PluginConfig
	var version string
	if strings.HasSuffix(name, ".conflist") {
		list, err := libcni.NetworkConfFromBytes(b) // ConfListFromBytes, undeprecated
		if err != nil {
			return fmt.Errorf("not a valid CNI config list: %w", err)
		}
		plugins, version = list.Plugins, list.CNIVersion
	} else {
		if !strings.HasSuffix(name, ".conf") && !strings.HasSuffix(name, ".json") {
			return fmt.Errorf("file name %q: a CNI config ends in .conflist, .conf or .json, or the runtime will not read it", name)
		}
		one, err := libcni.NetworkPluginConfFromBytes(b) // ConfFromBytes, undeprecated
		if err != nil {
			return fmt.Errorf("not a valid CNI config (a config list must be named .conflist): %w", err)
		}
		plugins, version = []*libcni.PluginConfig{one}, one.Network.CNIVersion
	}
	if !slices.Contains(cni.Versions.SupportedVersions(), version) {
		return fmt.Errorf("cniVersion %q: the warmpool plugin speaks %v", version, cni.Versions.SupportedVersions())
	}
	found := 0
	for i, p := range plugins {
		// libcni has parsed the ipam section already.
		if p.Network.IPAM.Type != cni.PluginType {
			continue
		}
		// What the plugin itself will check at every ADD: the pool's
		// name, the timeout.
		if _, _, err := cni.ParseConfig(p.Bytes); err != nil {
			return fmt.Errorf("plugin %d (%s): its ipam section: %w", i, p.Network.Type, err)
		}
		found++
	}
	if found == 0 {
		return fmt.Errorf("no plugin has an ipam section of type %q: this is not a warmpool network", cni.PluginType)
	}
	return nil
}

// replace makes path hold b with mode, atomically, unless it already
// does. It reports whether it wrote.
func replace(path string, b []byte, mode os.FileMode) (bool, error) {
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, b) {
		if info, err := os.Stat(path); err == nil && info.Mode().Perm() == mode {
			return false, nil
		}
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	// In the target directory, so that the rename stays on one file
	// system and is atomic; hidden, so that no runtime or Multus takes
	// it for a config while it is written.
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return false, err
	}
	done := false
	defer func() {
		if !done {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, bytes.NewReader(b)); err != nil {
		return false, err
	}
	// Chmod, not CreateTemp's mode: the umask must not narrow it.
	if err := tmp.Chmod(mode); err != nil {
		return false, err
	}
	// Synced before the rename: a crash must not leave the name pointing
	// at an empty file.
	if err := tmp.Sync(); err != nil {
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, err
	}
	done = true
	// The rename itself is durable once the directory is synced.
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		_ = d.Close()
		if err != nil {
			return true, fmt.Errorf("sync %s: %w", dir, err)
		}
	}
	return true, nil
}
