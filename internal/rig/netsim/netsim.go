// Package netsim builds the network side of a simulated node: a "host"
// network namespace per node holding a veth pair whose end m0 serves as the
// macvlan master (the kernel here has no dummy, ipvlan or VLAN links), and a
// network namespace per pod. It owns every namespace it creates and removes
// them all on Close. Tests and the perf harness share it.
package netsim

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Master is the name of the macvlan master link inside every host namespace.
const Master = "m0"

// netnsDir is where `ip netns` keeps named namespaces.
const netnsDir = "/run/netns"

// Prefix starts the name of every namespace this package creates, so that a
// person can tell them apart in `ip netns list`.
const Prefix = "wp-"

// Host is a simulated node's host network namespace. Its methods are safe
// for concurrent use.
type Host struct {
	// Name is the namespace's name in `ip netns`.
	Name string

	mu     sync.Mutex
	pods   map[string]*Pod
	closed bool
}

// Pod is a pod's network namespace.
type Pod struct {
	// Name is the namespace's name in `ip netns`.
	Name string
}

// Path is the namespace's bind mount, the CNI_NETNS a runtime passes.
func (p *Pod) Path() string { return filepath.Join(netnsDir, p.Name) }

// Path is the host namespace's bind mount.
func (h *Host) Path() string { return filepath.Join(netnsDir, h.Name) }

// NewHost creates a host namespace for the node called node, with loopback
// up and a veth pair m0 <-> m0p, both up, as the macvlan master.
func NewHost(node string) (h *Host, err error) {
	name, err := uniqueName(node)
	if err != nil {
		return nil, err
	}
	if err := ip("netns", "add", name); err != nil {
		return nil, fmt.Errorf("host namespace for %s: %w", node, err)
	}
	h = &Host{Name: name, pods: make(map[string]*Pod)}
	defer func() {
		if err != nil {
			err = errors.Join(err, h.Close())
		}
	}()
	for _, args := range [][]string{
		{"-n", name, "link", "set", "lo", "up"},
		{"-n", name, "link", "add", Master, "type", "veth", "peer", "name", Master + "p"},
		{"-n", name, "link", "set", Master, "up"},
		{"-n", name, "link", "set", Master + "p", "up"},
	} {
		if err := ip(args...); err != nil {
			return h, fmt.Errorf("host namespace %s: %w", name, err)
		}
	}
	return h, nil
}

// NewPod creates a network namespace for a pod of this host, with loopback up.
func (h *Host) NewPod(pod string) (*Pod, error) {
	name, err := uniqueName(pod)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, fmt.Errorf("pod namespace for %s: host %s is closed", pod, h.Name)
	}
	p := &Pod{Name: name}
	h.pods[name] = p // recorded first, so Close removes it even if set-up fails
	h.mu.Unlock()
	if err := ip("netns", "add", name); err != nil {
		h.forget(p)
		return nil, fmt.Errorf("pod namespace for %s: %w", pod, err)
	}
	// A Close that ran while the namespace was being added found nothing to
	// remove: undo here, or the namespace would outlive its host.
	h.mu.Lock()
	closed := h.closed
	h.mu.Unlock()
	if closed {
		return nil, errors.Join(fmt.Errorf("pod namespace for %s: host %s was closed meanwhile", pod, h.Name), removeNetns(name))
	}
	if err := ip("-n", name, "link", "set", "lo", "up"); err != nil {
		return nil, errors.Join(fmt.Errorf("pod namespace %s: %w", name, err), h.RemovePod(p))
	}
	return p, nil
}

// RemovePod deletes a pod namespace, and with it whatever interfaces a CNI
// plugin left inside. Removing a pod twice is not an error.
func (h *Host) RemovePod(p *Pod) error {
	h.forget(p)
	return removeNetns(p.Name)
}

func (h *Host) forget(p *Pod) {
	h.mu.Lock()
	delete(h.pods, p.Name)
	h.mu.Unlock()
}

// Do runs fn on a thread inside the host namespace: a CNI plugin exec'd from
// fn sees the host's links, m0 among them, as a runtime on that node would.
func (h *Host) Do(fn func() error) error {
	netns, err := ns.GetNS(h.Path())
	if err != nil {
		return fmt.Errorf("host namespace %s: %w", h.Name, err)
	}
	defer netns.Close()
	return netns.Do(func(ns.NetNS) error { return fn() })
}

// DisableDAD turns IPv6 duplicate address detection off inside the pod
// namespace, as the perf harness does by default: with it on, every
// dual-stack ADD through macvlan waits ~1.5-2 s for DAD, which hides the
// IPAM's own cost.
func (p *Pod) DisableDAD() error {
	netns, err := ns.GetNS(p.Path())
	if err != nil {
		return fmt.Errorf("pod namespace %s: %w", p.Name, err)
	}
	defer netns.Close()
	return netns.Do(func(ns.NetNS) error {
		// /proc/sys/net shows the namespace of the thread that opens it.
		for _, conf := range []string{"all", "default"} {
			f := "/proc/sys/net/ipv6/conf/" + conf + "/accept_dad"
			if err := os.WriteFile(f, []byte("0"), 0o644); err != nil {
				return fmt.Errorf("pod namespace %s: %w", p.Name, err)
			}
		}
		return nil
	})
}

// Close removes every pod namespace of the host, then the host namespace.
// It is idempotent and keeps going past errors, returning them joined.
func (h *Host) Close() error {
	h.mu.Lock()
	h.closed = true
	pods := h.pods
	h.pods = map[string]*Pod{}
	h.mu.Unlock()
	var errs []error
	for _, p := range pods {
		errs = append(errs, removeNetns(p.Name))
	}
	errs = append(errs, removeNetns(h.Name))
	return errors.Join(errs...)
}

// Exists reports whether a named namespace exists.
func Exists(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

// removeNetns deletes a namespace; one that is already gone (a concurrent
// remover won) is not an error.
func removeNetns(name string) error {
	if !Exists(name) {
		return nil
	}
	if err := ip("netns", "del", name); err != nil && Exists(name) {
		return fmt.Errorf("remove namespace %s: %w", name, err)
	}
	return nil
}

// uniqueName makes a namespace name that is unique across concurrent test
// processes and still says which node or pod it is for. It carries the
// creating process's pid and start time, so SweepStale can tell a leftover
// of a killed process from a namespace in use, even once the pid is reused:
// wp-<pid>.<start>-<base>-<random>.
func uniqueName(base string) (string, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("namespace name: %w", err)
	}
	base = strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' {
			return '-'
		}
		return r
	}, base)
	if len(base) > 40 {
		base = base[:40]
	}
	return fmt.Sprintf("%s%s-%s-%s", Prefix, self, base, hex.EncodeToString(b)), nil
}

// SweepStale removes the namespaces this package created in processes that
// no longer exist: what a test binary killed with SIGKILL could not clean
// up. Namespaces of live processes are left alone. It returns the names it
// removed.
func SweepStale() ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sweep namespaces: %w", err)
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		creator, ok := creatorOf(e.Name())
		if !ok || creator == self || processAlive(creator) {
			continue
		}
		if err := removeNetns(e.Name()); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, e.Name())
	}
	return removed, errors.Join(errs...)
}

// self is this process as "<pid>.<start time>", the creator tag in names.
var self = processTag(os.Getpid())

// processTag returns "<pid>.<start time in clock ticks since boot>", or ""
// when the process does not exist.
func processTag(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command name (field 2) may hold spaces; fields after it are plain.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return ""
	}
	fields := strings.Fields(string(b[i+1:]))
	// starttime is field 22 of stat, the 20th after the command name.
	if len(fields) < 20 {
		return ""
	}
	return strconv.Itoa(pid) + "." + fields[19]
}

// creatorOf parses the creator tag out of a name made by uniqueName.
func creatorOf(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return "", false
	}
	tag, _, ok := strings.Cut(rest, "-")
	if !ok {
		return "", false
	}
	pid, _, ok := strings.Cut(tag, ".")
	if n, err := strconv.Atoi(pid); !ok || err != nil || n <= 0 {
		return "", false
	}
	return tag, true
}

// processAlive reports whether the process of a creator tag still runs: a
// process with that pid exists and started at the same time.
func processAlive(tag string) bool {
	pid, _, _ := strings.Cut(tag, ".")
	n, _ := strconv.Atoi(pid)
	return processTag(n) == tag
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Available reports why this machine cannot create namespaces, or nil: it
// needs the ip command (iproute2) and the rights to add a namespace.
func Available() error {
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("ip (iproute2) not found: %w", err)
	}
	name, err := uniqueName("probe")
	if err != nil {
		return err
	}
	if err := ip("netns", "add", name); err != nil {
		return err
	}
	return removeNetns(name)
}
