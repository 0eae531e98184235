// Package cni is the IPAM plugin the container runtime execs (type
// "warmpool" in the ipam section of a network config). It is wiring: it
// parses the netconf and CNI_ARGS, asks the node agent over its unix socket
// (agent/wire), and prints the result in the CNI version the runtime asked
// for. It holds no state and imports no Kubernetes client, so the binary is
// small and starts fast.
package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/warmpool/warmpool/agent/wire"
)

// PluginType is the ipam type that selects this plugin.
const PluginType = "warmpool"

// DefaultTimeout bounds one call to the agent. A warm hit answers in
// milliseconds; the bound covers a cache miss that waits for the allocator.
const DefaultTimeout = 10 * time.Second

// IPAMConfig is the ipam section of the network config.
type IPAMConfig struct {
	Type string `json:"type"`
	// Pool names the IPPool to allocate from; empty lets the agent choose by
	// the pod's annotation and the pools' selectors.
	Pool string `json:"pool,omitempty"`
	// Socket is the agent's socket; default wire.DefaultSocket.
	Socket string `json:"socket,omitempty"`
	// Timeout bounds a call to the agent, as a Go duration ("10s").
	Timeout string `json:"timeout,omitempty"`
}

// NetConf is the part of the network config the plugin reads.
type NetConf struct {
	types.NetConf
	IPAM IPAMConfig `json:"ipam"`
	// ValidAttachments is set for GC (CNI 1.1).
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments,omitempty"`
}

// K8sArgs are the CNI_ARGS a kubelet passes.
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS keys
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

// Caller sends one request to the agent; wire.Call in production.
type Caller func(ctx context.Context, socket string, req *wire.Request) (*wire.Response, error)

// Plugin implements the CNI operations against the agent.
type Plugin struct {
	Call Caller
}

// Funcs returns the operations for skel.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

// Versions are the CNI spec versions the plugin speaks.
var Versions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// dnsSubdomain is the shape of a Kubernetes object name.
var dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// ParseConfig reads and checks the network config.
func ParseConfig(stdin []byte) (*NetConf, time.Duration, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, 0, types.NewError(types.ErrDecodingFailure, "the network config is not valid JSON", err.Error())
	}
	if conf.IPAM.Type != PluginType {
		return nil, 0, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("ipam.type is %q; this plugin is %q", conf.IPAM.Type, PluginType), "")
	}
	if p := conf.IPAM.Pool; p != "" && (len(p) > 253 || !dnsSubdomain.MatchString(p)) {
		return nil, 0, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("ipam.pool %q is not a valid IPPool name", p), "use the name of an IPPool object (lower-case DNS subdomain)")
	}
	if conf.IPAM.Socket == "" {
		conf.IPAM.Socket = wire.DefaultSocket
	}
	timeout := DefaultTimeout
	if conf.IPAM.Timeout != "" {
		d, err := time.ParseDuration(conf.IPAM.Timeout)
		if err != nil || d <= 0 {
			return nil, 0, types.NewError(types.ErrInvalidNetworkConfig,
				fmt.Sprintf("ipam.timeout %q is not a positive duration", conf.IPAM.Timeout), `write it like "10s"`)
		}
		timeout = d
	}
	return conf, timeout, nil
}

// ParseArgs reads the pod's identity from CNI_ARGS.
func ParseArgs(cniArgs string) (wire.Pod, error) {
	args := K8sArgs{}
	args.IgnoreUnknown = true
	if err := types.LoadArgs(cniArgs, &args); err != nil {
		return wire.Pod{}, types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS cannot be parsed", err.Error())
	}
	return wire.Pod{
		Namespace: string(args.K8S_POD_NAMESPACE),
		Name:      string(args.K8S_POD_NAME),
		UID:       string(args.K8S_POD_UID),
	}, nil
}

func (p *Plugin) request(args *skel.CmdArgs, op wire.Op) (*NetConf, time.Duration, *wire.Request, error) {
	conf, timeout, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, 0, nil, err
	}
	pod, err := ParseArgs(args.Args)
	if err != nil {
		return nil, 0, nil, err
	}
	req := &wire.Request{
		Op:         op,
		Network:    conf.Name,
		Pool:       conf.IPAM.Pool,
		Attachment: wire.Attachment{ContainerID: args.ContainerID, IfName: args.IfName},
		Netns:      args.Netns,
		Pod:        pod,
	}
	return conf, timeout, req, nil
}

// call sends req and turns every failure into a CNI error.
func (p *Plugin) call(conf *NetConf, timeout time.Duration, req *wire.Request) (*wire.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := p.Call(ctx, conf.IPAM.Socket, req)
	switch {
	case errors.Is(err, wire.ErrAgentUnreachable):
		code := types.ErrTryAgainLater
		if req.Op == wire.OpStatus {
			code = types.ErrPluginNotAvailable
		}
		return nil, types.NewError(code,
			fmt.Sprintf("the warmpool agent is not running on this node (no socket at %s)", conf.IPAM.Socket),
			"check the warmpool-agent DaemonSet's pod on this node; the runtime retries")
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return nil, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("the warmpool agent closed the connection before answering %s (restarting?)", req.Op),
			"the runtime retries; an ADD retried for the same container gets what the agent recorded")
	case errors.Is(err, context.DeadlineExceeded):
		return nil, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("the warmpool agent did not answer %s within %s", req.Op, timeout), err.Error())
	case err != nil:
		return nil, types.NewError(types.ErrIOFailure, fmt.Sprintf("talking to the warmpool agent at %s failed", conf.IPAM.Socket), err.Error())
	case resp.Error != nil:
		return nil, types.NewError(resp.Error.Code, resp.Error.Msg, resp.Error.Details)
	}
	return resp, nil
}

// Add asks the agent for the attachment's addresses and prints the result.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	conf, timeout, req, err := p.request(args, wire.OpAdd)
	if err != nil {
		return err
	}
	if req.Pod.Namespace == "" || req.Pod.Name == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables,
			"CNI_ARGS lacks K8S_POD_NAMESPACE or K8S_POD_NAME",
			"warmpool allocates per Kubernetes pod: the runtime (kubelet) must pass them")
	}
	resp, err := p.call(conf, timeout, req)
	if err != nil {
		return err
	}
	if resp.Result == nil {
		return types.NewError(types.ErrInternal, "the warmpool agent answered ADD without a result", "")
	}
	result, err := ToCNIResult(resp.Result)
	if err != nil {
		return types.NewError(types.ErrInternal, "the warmpool agent answered ADD with a malformed result", err.Error())
	}
	return types.PrintResult(result, conf.CNIVersion)
}

// Del releases the attachment's addresses. The agent acknowledges at once
// and succeeds for an attachment it does not know.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, timeout, req, err := p.request(args, wire.OpDel)
	if err != nil {
		return err
	}
	_, err = p.call(conf, timeout, req)
	return err
}

// Check asks the agent whether the attachment still holds its addresses
// and compares them with the runtime's previous result.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, timeout, req, err := p.request(args, wire.OpCheck)
	if err != nil {
		return err
	}
	resp, err := p.call(conf, timeout, req)
	if err != nil {
		return err
	}
	if resp.Result == nil || conf.RawPrevResult == nil {
		return nil
	}
	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "prevResult cannot be parsed", err.Error())
	}
	prev, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "prevResult cannot be converted", err.Error())
	}
	held := map[string]bool{}
	for _, a := range resp.Result.IPs {
		held[a.CIDR] = true
	}
	for _, ip := range prev.IPs {
		if !held[ip.Address.String()] {
			return types.NewError(wire.CodeCheckMismatch,
				fmt.Sprintf("%s is no longer assigned to %s", ip.Address.String(), req.Attachment),
				"the runtime should delete and re-create the sandbox")
		}
	}
	return nil
}

// GC frees every assignment of this network whose attachment is not in the
// runtime's valid list.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, timeout, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	req := &wire.Request{Op: wire.OpGC, Network: conf.Name, Pool: conf.IPAM.Pool, Valid: []wire.Attachment{}}
	for _, a := range conf.ValidAttachments {
		req.Valid = append(req.Valid, wire.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	_, err = p.call(conf, timeout, req)
	return err
}

// Status reports whether the agent is reachable and can serve an ADD.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, timeout, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	_, err = p.call(conf, timeout, &wire.Request{Op: wire.OpStatus, Network: conf.Name, Pool: conf.IPAM.Pool})
	return err
}

// ToCNIResult converts the agent's answer to a CNI 1.x result.
func ToCNIResult(r *wire.Result) (*types100.Result, error) {
	result := &types100.Result{CNIVersion: types100.ImplementedSpecVersion}
	for _, a := range r.IPs {
		ip, ipnet, err := net.ParseCIDR(a.CIDR)
		if err != nil {
			return nil, fmt.Errorf("address %q: %w", a.CIDR, err)
		}
		ipc := &types100.IPConfig{Address: net.IPNet{IP: ip, Mask: ipnet.Mask}}
		if a.Gateway != "" {
			if ipc.Gateway = net.ParseIP(a.Gateway); ipc.Gateway == nil {
				return nil, fmt.Errorf("gateway %q is not an address", a.Gateway)
			}
		}
		result.IPs = append(result.IPs, ipc)
	}
	for _, rt := range r.Routes {
		_, dst, err := net.ParseCIDR(rt.Dst)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", rt.Dst, err)
		}
		route := &types.Route{Dst: *dst}
		if rt.GW != "" {
			if route.GW = net.ParseIP(rt.GW); route.GW == nil {
				return nil, fmt.Errorf("route gateway %q is not an address", rt.GW)
			}
		}
		result.Routes = append(result.Routes, route)
	}
	return result, nil
}
