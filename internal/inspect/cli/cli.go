// Package cli is kubectl-warmpool's command line: cobra commands and
// kubectl's connection flags over package inspect. It is apart from
// inspect so that the fault suite, which shares inspect's checks, does not
// link cobra and cli-runtime.
package cli

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/internal/inspect"
)

// show writes v as JSON with -o json, else as render's table (-o wide
// adds columns).
func show[T any](c *cli, v T, render func(io.Writer, T, bool) error) error {
	if c.output == inspect.FormatJSON {
		return inspect.WriteJSON(c.out, v)
	}
	return render(c.out, v, c.output == inspect.FormatWide)
}

type cli struct {
	config     *genericclioptions.ConfigFlags
	out        io.Writer
	output     string
	agents     []string
	selector   string
	port       string
	election   string
	timeout    time.Duration
	gcInterval time.Duration
	pool       string
	recheck    time.Duration
	code       int
}

// Run runs the CLI with args (without the program's name) and returns its
// exit code.
func Run(args []string, stdout, stderr io.Writer) int {
	c := &cli{out: stdout}
	root := c.command()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return inspect.ExitFailed
	}
	return c.code
}

func (c *cli) command() *cobra.Command {
	root := &cobra.Command{
		Use:   "kubectl-warmpool",
		Short: "Inspect warmpool: pools, nodes, addresses, leases, and cross-checks of its records",
		Long: `kubectl warmpool reads warmpool's three records of every address (the allocator's
NodeLeases and pool status, each agent's record, the pods) and compares them.
Agents are read through the apiserver's pod proxy (RBAC: get pods/proxy in
the agents' namespace), or at URLs given with --agent NODE=URL.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl warmpool"},
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if !inspect.ValidFormat(c.output) {
				return fmt.Errorf("-o %s: want json or wide", c.output)
			}
			return nil
		},
	}
	c.config = genericclioptions.NewConfigFlags(true)
	c.config.AddFlags(root.PersistentFlags())
	f := root.PersistentFlags()
	f.Lookup("namespace").Usage = "the namespace of warmpool's agents and election Lease (default " + inspect.DefaultNamespace + ")"
	f.StringVarP(&c.output, "output", "o", "", "output format: json or wide")
	f.StringArrayVar(&c.agents, "agent", nil, "NODE=URL of an agent not running as a pod (e.g. node-1=http://10.0.0.5:9420); repeatable; takes the place of a pod found on NODE")
	f.StringVar(&c.selector, "agent-selector", inspect.DefaultAgentSelector, "label selector of the agents' pods")
	f.StringVar(&c.port, "agent-port", inspect.DefaultAgentPort, "the agents' metrics port: a container port's name or a number")
	f.StringVar(&c.election, "election-lease", inspect.DefaultElectionLease, "name of the allocator's leader-election Lease")
	f.DurationVar(&c.timeout, "agent-timeout", inspect.DefaultTimeout, "timeout of each request to an agent")
	f.DurationVar(&c.gcInterval, "gc-interval", agent.DefaultGCInterval, "the agents' --gc-interval, to say how soon a leak is released")

	pools := &cobra.Command{Use: "pools", Short: "Each pool's subnets, counts, hit rate and conditions", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := c.gather(cmd.Context(), inspect.Need{})
			if err != nil {
				return err
			}
			rows := inspect.Pools(s)
			return show(c, rows, inspect.RenderPools)
		}}
	nodes := &cobra.Command{Use: "nodes", Short: "Per node and pool: the units its lease lists, its agent's warm/assigned split and hit rate, fenced, Ready", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := c.gather(cmd.Context(), inspect.Need{Agents: true, Metrics: true})
			if err != nil {
				return err
			}
			rows := inspect.Nodes(s, c.pool)
			return show(c, rows, inspect.RenderNodes)
		}}
	nodes.Flags().StringVar(&c.pool, "pool", "", "only this pool")
	where := &cobra.Command{Use: "where ADDRESS", Short: "Where one address is, in every record, and where they disagree", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := inspect.ParseAddress(args[0])
			if err != nil {
				return err
			}
			s, err := c.gather(cmd.Context(), inspect.Need{Pods: true, Agents: true})
			if err != nil {
				return err
			}
			loc := inspect.Where(s, a)
			return show(c, loc, inspect.RenderWhere)
		}}
	leases := &cobra.Command{Use: "leases", Short: "The allocator's election Lease and the NodeLeases", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := c.gather(cmd.Context(), inspect.Need{Election: true})
			if err != nil {
				return err
			}
			r := inspect.Leases(s)
			return show(c, r, inspect.RenderLeases)
		}}
	doctor := &cobra.Command{Use: "doctor", Short: "Cross-check the allocator's records, the agents' and the pods; exit 2 on warnings, 3 on errors", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := c.doctor(cmd.Context())
			if err != nil {
				return err
			}
			switch {
			case r.Errors > 0:
				c.code = inspect.ExitErrors
			case r.Warnings > 0:
				c.code = inspect.ExitWarnings
			}
			return show(c, r, inspect.RenderDoctor)
		}}
	doctor.Flags().DurationVar(&c.recheck, "recheck", 3*time.Second, "when the first reading finds something, read everything again after this long and report only what both readings found (0: one reading)")
	root.AddCommand(pools, nodes, where, leases, doctor)
	return root
}

func (c *cli) doctor(ctx context.Context) (inspect.DoctorReport, error) {
	need := inspect.Need{Election: true, Pods: true, Agents: true}
	s, err := c.gather(ctx, need)
	if err != nil {
		return inspect.DoctorReport{}, err
	}
	first := inspect.Doctor(s)
	if c.recheck <= 0 || len(first.Findings) == 0 {
		return first, nil
	}
	select {
	case <-ctx.Done():
		return inspect.DoctorReport{}, ctx.Err()
	case <-time.After(c.recheck):
	}
	if s, err = c.gather(ctx, need); err != nil {
		return inspect.DoctorReport{}, err
	}
	return inspect.Confirm(first, inspect.Doctor(s)), nil
}

func (c *cli) gather(ctx context.Context, need inspect.Need) (*inspect.Snapshot, error) {
	g, err := c.gatherer()
	if err != nil {
		return nil, err
	}
	return g.Gather(ctx, need)
}

func (c *cli) gatherer() (*inspect.Gatherer, error) {
	urls, err := parseAgentFlags(c.agents)
	if err != nil {
		return nil, err
	}
	cfg, err := c.config.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.UserAgent = "kubectl-warmpool"
	// A handful of requests per command; client-go's default limiter (5
	// per second) would only slow the pod pages down.
	cfg.QPS, cfg.Burst = 50, 100
	kube, err := kubernetes.NewForConfig(client.KubeConfig(cfg))
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	wp, err := client.New(cfg)
	if err != nil {
		return nil, err
	}
	ns := inspect.DefaultNamespace
	if f := c.config.Namespace; f != nil && *f != "" {
		ns = *f
	}
	return &inspect.Gatherer{Kube: kube, Pools: wp.IPPools(), Leases: wp.NodeLeases(), Opts: inspect.Options{
		Namespace: ns, AgentSelector: c.selector, AgentPort: c.port, ElectionLease: c.election,
		AgentURLs: urls, Timeout: c.timeout, GCInterval: c.gcInterval,
	}}, nil
}

// parseAgentFlags reads --agent NODE=URL flags.
func parseAgentFlags(flags []string) (map[string]string, error) {
	out := map[string]string{}
	for _, f := range flags {
		node, raw, ok := strings.Cut(f, "=")
		if !ok || node == "" || raw == "" {
			return nil, fmt.Errorf("--agent %q: want NODE=URL", f)
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("--agent %q: %s is not an http(s) URL such as http://10.0.0.5:9420", f, raw)
		}
		if _, dup := out[node]; dup {
			return nil, fmt.Errorf("--agent: node %s given twice", node)
		}
		out[node] = raw
	}
	return out, nil
}
