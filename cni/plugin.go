// Package cni is what the IPAM plugin means, served by the node agent. The
// plugin binary (cni/shim) forwards each exec as the runtime made it;
// Serve checks it as the CNI library's skel would in a plugin, parses the
// netconf and CNI_ARGS, asks the agent, and returns what the plugin prints,
// in the CNI version the runtime asked for. Keeping it here, not in the
// binary, leaves the binary nothing to parse but the socket's path, and
// makes the agent the one place that knows what an exec means.
package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/cni/shim"
)

// PluginType is the ipam type that selects this plugin.
const PluginType = "warmpool"

// IPAMConfig is the ipam section of the network config.
type IPAMConfig struct {
	Type string `json:"type"`
	// Pool names the IPPool to allocate from; empty lets the agent choose by
	// the pod's annotation and the pools' selectors.
	Pool string `json:"pool,omitempty"`
	// Socket is the agent's socket; default wire.DefaultSocket. The
	// plugin binary reads it; the agent only checks the config holds it
	// as a string.
	Socket string `json:"socket,omitempty"`
	// Timeout bounds the agent's work on a request, as a Go duration
	// ("10s"); default shim.DefaultTimeout.
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

// Handler answers one request: the agent's Handle.
type Handler func(ctx context.Context, req *wire.Request) *wire.Response

// Plugin implements the CNI operations against the agent.
type Plugin struct {
	Handle Handler
}

// Versions are the CNI spec versions the plugin speaks.
var Versions = version.PluginSupports(wire.SpecVersions...)

// Serve answers one exec of the plugin: the bytes it prints on stdout and
// its exit code. A failure is a CNI error, printed as skel prints it.
func Serve(ctx context.Context, h Handler, inv *wire.Invocation) ([]byte, int) {
	var out bytes.Buffer
	if err := (&Plugin{Handle: h}).dispatch(ctx, inv, &out); err != nil {
		return Refusal(err.Code, err.Msg, err.Details)
	}
	return out.Bytes(), 0
}

// Refusal is the answer to an exec the agent could not read.
func Refusal(code uint, msg, details string) ([]byte, int) {
	b, _ := json.MarshalIndent(types.NewError(code, msg, details), "", "    ")
	return b, 1
}

// required lists, per command, the variables skel requires.
var required = map[string][]string{
	"ADD":    {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"},
	"CHECK":  {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"},
	"DEL":    {"CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"},
	"GC":     {"CNI_PATH"},
	"STATUS": {"CNI_PATH"},
}

// minimum is the lowest config version a command exists in.
var minimum = map[string]string{"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

// dispatch checks the exec as skel does for a plugin, with skel's codes
// and messages (a runtime and its operators know them), then runs the
// command. Not checked: skel's refusal of a CNI_NETNS that is the plugin's
// own namespace, which guards plugins that configure interfaces; an IPAM
// enters no namespace.
func (p *Plugin) dispatch(ctx context.Context, inv *wire.Invocation, out io.Writer) *types.Error {
	cmd := inv.Getenv("CNI_COMMAND")
	missing := []string{}
	if cmd == "" {
		missing = append(missing, "CNI_COMMAND")
	}
	for _, name := range required[cmd] {
		if inv.Getenv(name) == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 && (cmd == "ADD" || cmd == "CHECK" || cmd == "DEL") {
		if err := utils.ValidateContainerID(inv.Getenv("CNI_CONTAINERID")); err != nil {
			return err
		}
		if err := utils.ValidateInterfaceName(inv.Getenv("CNI_IFNAME")); err != nil {
			return err
		}
	}
	if len(missing) > 0 {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("required env variables [%s] missing", strings.Join(missing, ",")), "")
	}
	if cmd == "VERSION" {
		if err := Versions.Encode(out); err != nil {
			return types.NewError(types.ErrIOFailure, err.Error(), "")
		}
		return nil
	}
	var op func(context.Context, *skel.CmdArgs, io.Writer) error
	switch cmd {
	case "ADD":
		op = p.Add
	case "DEL":
		op = p.Del
	case "CHECK":
		op = p.Check
	case "GC":
		op = p.GC
	case "STATUS":
		op = p.Status
	default:
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("unknown CNI_COMMAND: %v", cmd), "")
	}
	if err := validateName(inv.Stdin); err != nil {
		return err
	}
	confVersion, err := (&version.ConfigDecoder{}).Decode(inv.Stdin)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	if low, ok := minimum[cmd]; ok {
		atLeast, err := version.GreaterThanOrEqualTo(confVersion, low)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, err.Error(), "")
		}
		if !atLeast {
			return types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("config version does not allow %s", cmd), "")
		}
	}
	if verErr := (&version.Reconciler{}).Check(confVersion, Versions); verErr != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "incompatible CNI versions", verErr.Details())
	}
	args := &skel.CmdArgs{
		ContainerID:   inv.Getenv("CNI_CONTAINERID"),
		Netns:         inv.Getenv("CNI_NETNS"),
		IfName:        inv.Getenv("CNI_IFNAME"),
		Args:          inv.Getenv("CNI_ARGS"),
		Path:          inv.Getenv("CNI_PATH"),
		NetnsOverride: inv.Getenv("CNI_NETNS_OVERRIDE"),
		StdinData:     inv.Stdin,
	}
	if err := op(ctx, args, out); err != nil {
		var e *types.Error
		if errors.As(err, &e) {
			return e
		}
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	return nil
}

// validateName is skel's first look at the config: JSON with a valid
// network name.
func validateName(stdin []byte) *types.Error {
	var conf struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(stdin, &conf); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("error unmarshall network config: %v", err), "")
	}
	if conf.Name == "" {
		return types.NewError(types.ErrInvalidNetworkConfig, "missing network name", "")
	}
	return utils.ValidateNetworkName(conf.Name)
}

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
	timeout := shim.DefaultTimeout
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

// call asks the agent, bounded by ipam.timeout, and turns its error into a
// CNI error.
func (p *Plugin) call(ctx context.Context, timeout time.Duration, req *wire.Request) (*wire.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp := p.Handle(ctx, req)
	if resp.Error != nil {
		return nil, types.NewError(resp.Error.Code, resp.Error.Msg, resp.Error.Details)
	}
	return resp, nil
}

// Add asks the agent for the attachment's addresses and prints the result.
func (p *Plugin) Add(ctx context.Context, args *skel.CmdArgs, out io.Writer) error {
	conf, timeout, req, err := p.request(args, wire.OpAdd)
	if err != nil {
		return err
	}
	if req.Pod.Namespace == "" || req.Pod.Name == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables,
			"CNI_ARGS lacks K8S_POD_NAMESPACE or K8S_POD_NAME",
			"warmpool allocates per Kubernetes pod: the runtime (kubelet) must pass them")
	}
	resp, err := p.call(ctx, timeout, req)
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
	// What types.PrintResult does, to out rather than os.Stdout.
	versioned, err := result.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return err
	}
	return versioned.PrintTo(out)
}

// Del releases the attachment's addresses. The agent acknowledges at once
// and succeeds for an attachment it does not know.
func (p *Plugin) Del(ctx context.Context, args *skel.CmdArgs, _ io.Writer) error {
	_, timeout, req, err := p.request(args, wire.OpDel)
	if err != nil {
		return err
	}
	_, err = p.call(ctx, timeout, req)
	return err
}

// Check asks the agent whether the attachment still holds its addresses
// and compares them with the runtime's previous result.
func (p *Plugin) Check(ctx context.Context, args *skel.CmdArgs, _ io.Writer) error {
	conf, timeout, req, err := p.request(args, wire.OpCheck)
	if err != nil {
		return err
	}
	resp, err := p.call(ctx, timeout, req)
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
func (p *Plugin) GC(ctx context.Context, args *skel.CmdArgs, _ io.Writer) error {
	conf, timeout, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	req := &wire.Request{Op: wire.OpGC, Network: conf.Name, Pool: conf.IPAM.Pool, Valid: []wire.Attachment{}}
	for _, a := range conf.ValidAttachments {
		req.Valid = append(req.Valid, wire.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	_, err = p.call(ctx, timeout, req)
	return err
}

// Status reports whether the agent is reachable and can serve an ADD.
func (p *Plugin) Status(ctx context.Context, args *skel.CmdArgs, _ io.Writer) error {
	conf, timeout, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	_, err = p.call(ctx, timeout, &wire.Request{Op: wire.OpStatus, Network: conf.Name, Pool: conf.IPAM.Pool})
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
