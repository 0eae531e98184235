// Command kube is the Kubernetes binaries warmpool's tests run, in one
// binary: the control plane (kube-apiserver, kube-controller-manager,
// kube-scheduler) and a real node's (kubelet, kube-proxy, kubectl). The
// first argument picks the component; the rest are that component's own
// flags. One binary links once instead of six times, which saves minutes
// on a cold build.
//
// This is a separate module because k8s.io/kubernetes cannot be required
// without pinning each of its staging modules (see go.mod).
package main

import (
	"context"
	"fmt"
	"os"
	_ "time/tzdata" // CronJob time zones, as in the upstream mains

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	kubectl "k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

const usage = "usage: kube {kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl} [flags]"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	// The component sees itself as the program: kubectl reads os.Args for
	// its plugins (kubectl warmpool) and its verbosity.
	os.Args = os.Args[1:]
	var cmd *cobra.Command
	switch os.Args[0] {
	case "kube-apiserver":
		cmd = apiserver.NewAPIServerCommand()
	case "kube-controller-manager":
		cmd = controllermanager.NewControllerManagerCommand()
	case "kube-scheduler":
		cmd = scheduler.NewSchedulerCommand()
	case "kubelet":
		cmd = kubelet.NewKubeletCommand(context.Background())
	case "kube-proxy":
		cmd = proxy.NewProxyCommand()
	case "kubectl":
		// As cmd/kubectl's main: the verbosity before the flags are parsed,
		// and errors printed kubectl's way.
		logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) //nolint:errcheck
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			util.CheckErr(err)
		}
		return
	default:
		fmt.Fprintf(os.Stderr, "kube: unknown component %q\n%s\n", os.Args[0], usage)
		os.Exit(2)
	}
	cmd.SetArgs(os.Args[1:])
	os.Exit(cli.Run(cmd))
}
