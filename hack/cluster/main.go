// Command r1-cluster is a multi-call binary holding the Kubernetes control
// plane used by the local test cluster: etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler. The component is chosen by the
// first argument, or by argv[0] when invoked through a symlink.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args
	switch name {
	case "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler":
	default:
		if len(os.Args) < 2 {
			fmt.Fprintln(os.Stderr, "usage: r1-cluster etcd|kube-apiserver|kube-controller-manager|kube-scheduler [flags]")
			os.Exit(2)
		}
		name = os.Args[1]
		args = append([]string{name}, os.Args[2:]...)
	}
	os.Args = args
	switch name {
	case "etcd":
		etcdmain.Main(args)
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	default:
		fmt.Fprintf(os.Stderr, "unknown component %q\n", name)
		os.Exit(2)
	}
}
