"""r1-operator: run the operator against the current kubeconfig (or in-cluster credentials)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r1-operator", description=__doc__)
    p.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable); default: all")
    p.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    p.add_argument("--standalone", action="store_true", help="no peering, one replica only (the default without --peering)")
    p.add_argument("--peering", help="HA replicas: the kopf peering object they share (KopfPeering in each watched "
                   "namespace, or ClusterKopfPeering with all namespaces; CRDs in crds/kopf-peering.yaml). "
                   "Without it the operator runs standalone")
    p.add_argument("--priority", type=int, default=0, help="peering priority: the highest live replica works, "
                   "the others pause until it stops heart-beating")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint (kopf)")
    p.add_argument("--readiness", default="http://0.0.0.0:8081/readyz",
                   help="readiness endpoint: 200 once started and while the API server answers (empty: off)")
    p.add_argument("--metrics-port", type=int, default=8000, help="Prometheus /metrics port (0: off)")
    p.add_argument("--verbose", action="store_true", help="debug logging of the operator and kopf")
    p.add_argument("--debug", action="store_true", help="--verbose, and asyncio's debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.namespace and args.all_namespaces:
        print("r1-operator: --namespace and --all-namespaces are exclusive", file=sys.stderr)
        return 2
    if args.standalone and args.peering:
        print("r1-operator: --standalone and --peering are exclusive", file=sys.stderr)
        return 2
    import kopf

    from r1_operator import handlers, metrics  # noqa: F401  (registers the handlers)
    from r1_operator.settings import OperatorSettings

    try:
        settings = OperatorSettings.from_env()  # the one read of the environment; handlers find it in kopf's memo
    except ValueError as exc:
        print(f"r1-operator: {exc}", file=sys.stderr)
        return 2

    if args.metrics_port:
        metrics.serve(args.metrics_port)
    from r1_operator import readiness

    ready = readiness.Readiness()
    if args.readiness:
        readiness.serve(args.readiness, ready)
    kopf.configure(debug=args.debug, verbose=args.verbose)
    if args.peering:
        from r1_operator.peering import watch_for_peering_object

        watch_for_peering_object(args.peering, args.namespace, settings.kubeconfig or None)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        standalone=not args.peering,
        peering_name=args.peering,
        priority=args.priority,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(settings=settings, readiness=ready, namespaces=list(args.namespace)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
