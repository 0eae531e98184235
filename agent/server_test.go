package agent

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestListenMakesThePrivateSocket: the socket is 0600 and the directory
// Listen creates for it 0700, even under a umask of 0 (only root, as the
// container runtime runs the plugin, may ask for addresses); a directory
// that exists is left as it is.
func TestListenMakesThePrivateSocket(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	f := newFixture(t, 0)
	dir := filepath.Join(t.TempDir(), "run", "warmpool")
	sock := filepath.Join(dir, "agent.sock")
	srv, err := Listen(f.agent, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for path, want := range map[string]os.FileMode{dir: os.ModeDir | 0o700, sock: os.ModeSocket | 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
		}
	}

	shared := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	srv2, err := Listen(f.agent, filepath.Join(shared, "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	for path, want := range map[string]os.FileMode{shared: 0o755, filepath.Join(shared, "agent.sock"): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v (an existing directory is left as it is)", path, fi.Mode().Perm(), want)
		}
	}
}
