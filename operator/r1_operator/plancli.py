"""`r1ctl plan`: plan against hypothetical hardware or every node of a cluster."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys

from r1_operator.api import contract
from r1_operator.planning.catalog import R1_REPO, Catalog, catalog_for, single_model_catalog
from r1_operator.api.types import SHARED_GPUS
from r1_operator.planning.evaluate import OFFLOADS, POLICIES, PlanRequest
from r1_operator.planning.gpus import GPU_RESOURCE, parse_memory_by_label
from r1_operator.planning.inventory import NodeCapacity, Toleration, hypothetical, inventory
from r1_operator.planning.memory import RuntimeSettings
from r1_operator.planning.plan import Plan, plan_cluster

GiB = 1 << 30


def add_plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="choose the quant variant and GPU offload for hardware or a cluster",
                       description="Plan a DeepSeek-R1 (or any GGUF) deployment. Exits 1 when nothing fits.")
    hw = p.add_argument_group("hypothetical hardware (GB means GiB, as in the blog's table)")
    hw.add_argument("--gpu-count", type=int)
    hw.add_argument("--gpu-memory-gb", type=float, help="memory of each GPU")
    hw.add_argument("--ram-gb", type=float)
    hw.add_argument("--disk-gb", type=float)
    hw.add_argument("--cpus", type=int, default=16)
    p.add_argument("--kubeconfig", help="plan against every node of this cluster instead")
    c = p.add_argument_group("cluster GPUs (with --kubeconfig)")
    c.add_argument("--gpu-resource", default=GPU_RESOURCE, help=f"the GPUs' extended resource (default "
                   f"{GPU_RESOURCE}; a MIG profile of the mixed strategy: nvidia.com/mig-3g.40gb)")
    c.add_argument("--shared-gpus", choices=SHARED_GPUS, default="refuse",
                   help="time-sliced GPUs, as spec.scheduling.sharedGPUs (default refuse)")
    c.add_argument("--gpu-memory-by-label", default="", metavar="JSON",
                   help='GPU memory for nodes nothing else describes, as the chart value gpuMemoryByLabel: '
                   '{"label-key=value": MiB}')
    c.add_argument("--node-pools", metavar="FILE",
                   help="node pools an autoscaler grows, as the chart value nodePools (a YAML or JSON list): each "
                   "pool's new nodes (pool/NAME/I) are planned on too")
    m = p.add_argument_group("model")
    m.add_argument("--repo", default=R1_REPO, help=f"hub repo (default {R1_REPO}, which has a built-in catalog)")
    m.add_argument("--revision", default="main")
    m.add_argument("--hub-files", nargs="+", help="for a repo without a built-in catalog: the GGUF file(s) to describe "
                   "from their headers (HTTP range requests against HF_ENDPOINT)")
    m.add_argument("--model-file", help="a local GGUF (or shard 1 of a split set) described from its headers")
    m.add_argument("--variant", default="auto", help="auto (default) or a variant name, e.g. UD-IQ1_S")
    m.add_argument("--min-variant", help="never choose a variant below this one")
    m.add_argument("--policy", choices=POLICIES, default="auto")
    m.add_argument("--offload", choices=OFFLOADS, default="estimate")
    r = p.add_argument_group("runtime settings (the runtime's own flags, defaults and bounds)")
    contract.add_arguments(r, {k: contract.SERVE_FLAGS[k] for k in
                               ("ctx_size", "cache_type_k", "cache_type_v", "flash_attn", "parallel")})
    r.add_argument("--gpu-headroom-gb", type=float, default=1.0, help="kept free on each GPU (default 1)")
    r.add_argument("--ram-reserve-gb", type=float, default=8.0, help="RAM kept for the system (default 8)")
    r.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE][:EFFECT]",
                   help="taints the deployment tolerates (repeatable)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=run_plan)


def _toleration(text: str) -> Toleration:
    kv, _, effect = text.partition(":")
    key, eq, value = kv.partition("=")
    return Toleration(key=key, operator="Equal" if eq else "Exists", value=value, effect=effect)


def _catalog(args: argparse.Namespace) -> Catalog:
    if args.model_file:
        from r1_operator.modelinfo.describe import describe_local

        return single_model_catalog(describe_local(args.model_file), name="model")
    if args.hub_files:
        from r1_operator.modelinfo.describe import describe_remote

        return single_model_catalog(describe_remote(args.repo, args.hub_files, args.revision), name="model")
    return catalog_for(args.repo)


def _pools(args: argparse.Namespace) -> list[NodeCapacity]:
    if not args.node_pools:
        return []
    import yaml

    from r1_operator.planning.pools import parse_pools, pool_nodes

    try:
        raw = yaml.safe_load(Path(args.node_pools).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"--node-pools {args.node_pools}: {exc}") from None
    return pool_nodes(parse_pools(raw, f"--node-pools {args.node_pools}"), args.gpu_resource,
                      parse_memory_by_label(args.gpu_memory_by_label))


def _nodes(args: argparse.Namespace) -> list[NodeCapacity]:
    if args.kubeconfig:
        from r1_operator.k8s.client import api_client, read_nodes_and_pods

        nodes, pods = read_nodes_and_pods(api_client(args.kubeconfig))
        return inventory(nodes, pods, args.gpu_resource,
                         memory_by_label=parse_memory_by_label(args.gpu_memory_by_label)) + _pools(args)
    if args.node_pools:
        return _pools(args)
    missing = [f for f, v in (("--gpu-count", args.gpu_count), ("--ram-gb", args.ram_gb)) if v is None]
    if missing:
        raise ValueError(f"give {' and '.join(missing)} (hypothetical hardware) or --kubeconfig")
    return [hypothetical(args.gpu_count, args.gpu_memory_gb or 0, args.ram_gb, args.disk_gb, args.cpus)]


def _mem(p: Plan) -> tuple[str, str]:
    gpu = sum(d.total for d in p.memory[:-1])
    cpu = p.memory[-1].total if p.memory else 0
    return (f"{gpu / GiB:.1f} GiB" if p.gpus else "-"), f"{cpu / GiB:.1f} GiB"


def render_table(best: Plan, plans: list[Plan], excluded: list[str]) -> str:
    rows = [("NODE", "VARIANT", "MODE", "GPU-LAYERS", "GPUS", "GPU-MEM", "CPU-MEM", "DISK")]
    for p in plans:
        gpu, cpu = _mem(p)
        rows.append((p.node or "-", p.variant or "-", p.mode, p.gpu_layers_text, str(p.gpus), gpu, cpu,
                     f"{p.disk_bytes / GiB:.0f} GiB"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if best.fits:
        lines.append(f"\nchosen: {best.variant} on {best.node}, --n-gpu-layers {best.n_gpu_layers}"
                     + (f" --tensor-split {','.join(map(str, best.tensor_split))}" if best.tensor_split else ""))
    else:
        lines.append("\nnothing fits")
    lines += ["reasons:"] + [f"  - {r}" for r in best.reasons]
    if best.warnings:
        lines += ["warnings:"] + [f"  - {w}" for w in best.warnings]
    return "\n".join(lines)


def run_plan(args: argparse.Namespace) -> int:
    for flag, v in (("--gpu-headroom-gb", args.gpu_headroom_gb), ("--ram-reserve-gb", args.ram_reserve_gb)):
        if v < 0:
            raise ValueError(f"{flag} must be >= 0, got {v}")
    settings = RuntimeSettings(ctx_size=args.ctx_size, cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v,
                               flash_attn=args.flash_attn, parallel=args.parallel)
    req = PlanRequest(variant=args.variant, policy=args.policy, min_variant=args.min_variant, offload=args.offload,
                      settings=settings, gpu_headroom_bytes=int(args.gpu_headroom_gb * GiB),
                      ram_reserve_bytes=int(args.ram_reserve_gb * GiB),
                      tolerations=tuple(_toleration(t) for t in args.toleration), shared_gpus=args.shared_gpus)
    catalog = _catalog(args)
    best, plans, excluded = plan_cluster(catalog, _nodes(args), req)
    if args.output == "json":
        print(json.dumps({**best.as_dict(), "nodes": [p.as_dict() for p in plans], "excluded": excluded}, indent=2))
    else:
        print(render_table(best, plans, excluded))
    if not best.fits:
        print("r1ctl plan: nothing fits", file=sys.stderr)
        return 1
    return 0
