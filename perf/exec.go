package perf

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// meteredExec runs the CNI plugins as libcni's RawExec does, and adds
// each plugin process's CPU time (its own and its children's: macvlan's
// includes the IPAM it delegates to) to the counter its context carries.
type meteredExec struct {
	*invoke.RawExec // FindInPath
	version.PluginDecoder
}

func newMeteredExec() *meteredExec {
	return &meteredExec{RawExec: &invoke.RawExec{Stderr: io.Discard}}
}

type execCPUKey struct{}

// withExecCPU returns a context whose CNI execs add their CPU time to n
// (nanoseconds).
func withExecCPU(ctx context.Context, n *atomic.Int64) context.Context {
	return context.WithValue(ctx, execCPUKey{}, n)
}

func (e *meteredExec) ExecPlugin(ctx context.Context, pluginPath string, stdinData []byte, environ []string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	c := exec.CommandContext(ctx, pluginPath)
	c.Env, c.Stdin, c.Stdout, c.Stderr = environ, bytes.NewReader(stdinData), &stdout, &stderr
	err := c.Run()
	if n, ok := ctx.Value(execCPUKey{}).(*atomic.Int64); ok && c.ProcessState != nil {
		if ru, ok := c.ProcessState.SysUsage().(*syscall.Rusage); ok {
			n.Add(syscall.TimevalToNsec(ru.Utime) + syscall.TimevalToNsec(ru.Stime))
		}
	}
	if err == nil {
		return stdout.Bytes(), nil
	}
	// As RawExec reports a failure: the plugin's error on stdout, else
	// what it said on stderr.
	msg := types.Error{}
	switch {
	case stdout.Len() > 0:
		if perr := json.Unmarshal(stdout.Bytes(), &msg); perr != nil {
			msg.Msg = fmt.Sprintf("netplugin failed but error parsing its diagnostic message %q: %v", stdout.String(), perr)
		}
	case stderr.Len() > 0:
		msg.Msg = fmt.Sprintf("netplugin failed: %q", stderr.String())
	default:
		msg.Msg = fmt.Sprintf("netplugin failed with no error message: %v", err)
	}
	return nil, &msg
}

// cpuOf is a counter's nanoseconds as a duration.
func cpuOf(n *atomic.Int64) time.Duration { return time.Duration(n.Load()) }
