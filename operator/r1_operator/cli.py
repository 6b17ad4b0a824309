"""r1ctl: the user-side command line (capacity planning, the local dev cluster)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _dev_up(args: argparse.Namespace) -> int:
    from r1_operator.dev import cluster
    from r1_operator.dev.nodes import load_shapes

    shapes = load_shapes(args.nodes)
    state = cluster.up(args.name, shapes, timeout=args.timeout, real_nodes=args.real_nodes, real_gpus=args.real_gpus,
                        keda=args.keda, autoscaler=args.autoscaler)
    print(state.kubeconfig)
    return 0


def _dev_down(args: argparse.Namespace) -> int:
    from r1_operator.dev import cluster

    killed = cluster.down(args.name)
    if killed:
        print(f"stopped; had to SIGKILL: {', '.join(killed)}", file=sys.stderr)
    return 0


def _dev_status(args: argparse.Namespace) -> int:
    from r1_operator.dev import cluster

    st = cluster.status(args.name)
    print(json.dumps(st, indent=2))
    return 0 if st["running"] else 1


def _dev_kubeconfig(args: argparse.Namespace) -> int:
    from r1_operator.dev import cluster

    state = cluster.ClusterState.load(args.name)
    if state is None:
        print(f"no dev cluster named {args.name!r}; start one with 'r1ctl dev up'", file=sys.stderr)
        return 1
    print(state.kubeconfig)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1ctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from r1_operator.plancli import add_plan_parser

    add_plan_parser(sub)

    crd = sub.add_parser("crd", help="print the R1Deployment CustomResourceDefinition (generated from the API types)")
    crd.set_defaults(func=_crd)
    dash = sub.add_parser("dashboard", help="print the Grafana dashboard JSON (the chart's files/dashboard.json)")
    dash.set_defaults(func=_dashboard)

    dev = sub.add_parser("dev", help="a local Kubernetes control plane with simulated GPU nodes")
    dsub = dev.add_subparsers(dest="dev_command", required=True)
    up = dsub.add_parser("up", help="start the cluster (or reuse a running one) and print its admin kubeconfig path")
    up.add_argument("--nodes", help="YAML file of node shapes ({nodes: [...]}); default: the four built-in shapes")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for a usable cluster")
    up.add_argument("--real-nodes", type=int, default=1, choices=range(0, 3), metavar="N",
                    help="real worker nodes beside the simulated ones (kubelet + containerd + runc on this host; "
                    "needs root; default 1, 0 for simulated nodes only)")
    up.add_argument("--real-gpus", type=int, default=0, choices=range(0, 9), metavar="G",
                    help="simulated nvidia.com/gpu count each real node advertises (no physical GPU exists here)")
    up.add_argument("--keda", action="store_true",
                    help="run KEDA too (its operator and metrics API server, built by make setup), for spec.autoscaling")
    up.add_argument("--autoscaler", action="store_true",
                    help="run Karpenter too (its kwok provider, built by make setup) with a GPU NodePool of "
                    "g6e.12xlarge nodes that appear when a pod asks (r1_operator/dev/data/autoscaler.yaml)")
    up.set_defaults(func=_dev_up)
    for name, func, text in (
        ("down", _dev_down, "stop the cluster and leave no process behind"),
        ("status", _dev_status, "show the cluster's processes (exit 1 when not running)"),
        ("kubeconfig", _dev_kubeconfig, "print the admin kubeconfig path"),
    ):
        p = dsub.add_parser(name, help=text)
        p.set_defaults(func=func)
    for p in dsub.choices.values():
        p.add_argument("--name", default="dev", help="cluster name (default: dev)")
    return parser


def _dashboard(args: argparse.Namespace) -> int:
    from r1_operator.dashboard import dashboard_json

    sys.stdout.write(dashboard_json() + "\n")
    return 0


def _crd(args: argparse.Namespace) -> int:
    from r1_operator.api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - top-level: one clear line instead of a traceback
        from pydantic import ValidationError

        from r1_operator.dev.processes import ClusterError

        if isinstance(exc, (ClusterError, ValueError, OSError, ValidationError)):
            print(f"r1ctl: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
