package install

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const goodList = `{
  "cniVersion": "1.0.0",
  "name": "underlay",
  "plugins": [
    {"type": "macvlan", "mode": "bridge", "ipam": {"type": "warmpool", "pool": "underlay-v4", "timeout": "5s"}}
  ]
}`

func write(t *testing.T, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestValidateConfig(t *testing.T) {
	cases := []struct {
		name, file, conf, wantErr string
	}{
		{"list", "a.conflist", goodList, ""},
		{"single", "a.conf", `{"cniVersion":"0.4.0","name":"n","type":"macvlan","ipam":{"type":"warmpool"}}`, ""},
		{"not json", "a.conflist", `{"cniVersion":`, "not a valid CNI config list"},
		{"no plugins", "a.conflist", `{"cniVersion":"1.0.0","name":"n"}`, "no plugin has an ipam section"},
		{"other ipam", "a.conflist", strings.Replace(goodList, `"type": "warmpool"`, `"type": "host-local"`, 1), "no plugin has an ipam section"},
		{"bad pool", "a.conflist", strings.Replace(goodList, "underlay-v4", "Under_Lay", 1), "not a valid IPPool name"},
		{"bad timeout", "a.conflist", strings.Replace(goodList, `"5s"`, `"soon"`, 1), "not a positive duration"},
		{"version", "a.conflist", strings.Replace(goodList, "1.0.0", "9.9.9", 1), `cniVersion "9.9.9"`},
		{"list named conf", "a.conf", goodList, "must be named .conflist"},
		{"extension", "a.yaml", goodList, "ends in .conflist"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := ValidateConfig(c.file, []byte(c.conf))
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("got %v, want an error with %q", err, c.wantErr)
			}
		})
	}
}

// TestInstallWritesAtomicallyWithModes installs into empty directories,
// under a umask that would narrow the modes, then again unchanged.
func TestInstallWritesAtomicallyWithModes(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	src, bin, confDir := t.TempDir(), t.TempDir(), filepath.Join(t.TempDir(), "multus", "net.d")
	o := Options{
		Plugin:  write(t, src, "warmpool", "#!/bin/true\nplugin v1\n", 0o700),
		BinDir:  bin,
		Conf:    write(t, src, "underlay.conflist", goodList, 0o600),
		ConfDir: confDir,
	}
	r, err := Install(o)
	if err != nil {
		t.Fatal(err)
	}
	if !r.PluginChanged || !r.ConfChanged {
		t.Fatalf("first install changed nothing: %+v", r)
	}
	for path, want := range map[string]os.FileMode{filepath.Join(bin, "warmpool"): 0o755, filepath.Join(confDir, "underlay.conflist"): 0o644} {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, info.Mode().Perm(), want)
		}
	}
	if got, _ := os.ReadFile(r.Conf); string(got) != goodList {
		t.Errorf("config: %q", got)
	}
	r, err = Install(o)
	if err != nil {
		t.Fatal(err)
	}
	if r.PluginChanged || r.ConfChanged {
		t.Errorf("second install of the same files wrote: %+v", r)
	}
	for _, dir := range []string{bin, confDir} {
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			t.Errorf("%s holds %d entries, want only the installed file (no temporary left)", dir, len(entries))
		}
	}
}

// TestInstallOverARunningPlugin replaces a binary that is executing: an
// installer that opened the target for writing would fail with ETXTBSY
// ("text file busy"); a rename leaves the running process its inode.
func TestInstallOverARunningPlugin(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatalf("no sleep binary to run as the old plugin: %v", err)
	}
	oldBin, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	src, bin, confDir := t.TempDir(), t.TempDir(), t.TempDir()
	target := write(t, bin, "warmpool", string(oldBin), 0o755)
	cmd := exec.Command(target, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	// The kernel refuses writes to the file once the exec has mapped it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		f, err := os.OpenFile(target, os.O_WRONLY, 0)
		if err != nil {
			if !strings.Contains(err.Error(), "text file busy") {
				t.Fatalf("open the running binary: %v", err)
			}
			break
		}
		_ = f.Close()
		if time.Now().After(deadline) {
			t.Fatal("the old plugin never became busy")
		}
		time.Sleep(10 * time.Millisecond)
	}
	newBin := []byte("#!/bin/sh\necho new plugin\n")
	_, err = Install(Options{
		Plugin:  write(t, src, "warmpool", string(newBin), 0o755),
		BinDir:  bin,
		Conf:    write(t, src, "u.conflist", goodList, 0o644),
		ConfDir: confDir,
	})
	if err != nil {
		t.Fatalf("install over a running plugin: %v", err)
	}
	if got, _ := os.ReadFile(target); !bytes.Equal(got, newBin) {
		t.Fatalf("the target still holds the old binary")
	}
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the running old plugin died: %v", err)
	}
}

// TestBrokenConfigWritesNothing: a config that fails validation leaves
// the node as it was, the plugin included.
func TestBrokenConfigWritesNothing(t *testing.T) {
	src, bin, confDir := t.TempDir(), t.TempDir(), t.TempDir()
	oldConf := write(t, confDir, "u.conflist", goodList, 0o644)
	_, err := Install(Options{
		Plugin:  write(t, src, "warmpool", "new", 0o755),
		BinDir:  bin,
		Conf:    write(t, src, "u.conflist", `{"cniVersion":"1.0.0","name":"u","plugins":[{"type":"macvlan","ipam":{"type":"host-local"}}]}`, 0o644),
		ConfDir: confDir,
	})
	if err == nil || !strings.Contains(err.Error(), "u.conflist") {
		t.Fatalf("got %v, want an error naming the config", err)
	}
	if entries, _ := os.ReadDir(bin); len(entries) != 0 {
		t.Errorf("the plugin was installed with a broken config")
	}
	if got, _ := os.ReadFile(oldConf); string(got) != goodList {
		t.Errorf("the old config was changed")
	}
}

func TestMissingInputs(t *testing.T) {
	src := t.TempDir()
	conf := write(t, src, "u.conflist", goodList, 0o644)
	for name, o := range map[string]Options{
		"no flags":   {},
		"no plugin":  {Plugin: filepath.Join(src, "absent"), BinDir: t.TempDir(), Conf: conf, ConfDir: t.TempDir()},
		"dir plugin": {Plugin: src, BinDir: t.TempDir(), Conf: conf, ConfDir: t.TempDir()},
		"no conf":    {Plugin: conf, BinDir: t.TempDir(), Conf: filepath.Join(src, "absent.conflist"), ConfDir: t.TempDir()},
	} {
		if _, err := Install(o); err == nil {
			t.Errorf("%s: installed", name)
		}
	}
}
