"""The contract between the planes: what the operator renders, the runtime's own parser accepts, bound for bound."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from r1_operator.api import contract
from r1_operator.api.crd import crd_yaml
from r1_operator.api.types import R1DeploymentSpec
from r1_operator.builders import manifests as mf
from r1_operator.dev.nodes import NodeShape
from r1_operator.planning.catalog import R1_REPO, catalog_for
from r1_operator.planning.decide import decide
from r1_operator.planning.inventory import inventory
from r1_operator.settings import OperatorSettings
from r1_runtime.cache.download import Listing, RemoteFile
from r1_runtime.cache.fetch import space_needed
from r1_runtime.cli import build_parser

S = OperatorSettings()
RUNTIME = build_parser()


def _node(gpus: int, mib: int | None) -> dict:
    n = NodeShape.model_validate({"name": "n1", "gpus": gpus, "gpuMemoryMiB": mib, "memory": "512Gi", "cpu": "64"}).to_node()
    n["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return n


def _render(spec: dict, gpus: int = 2) -> tuple[list[str], R1DeploymentSpec, dict]:
    s = R1DeploymentSpec.model_validate(spec)
    plan = decide(s, 1, inventory([_node(gpus, 81920 if gpus else None)], []), None).plan
    return mf.runtime_command("r1", s, plan, S), s, plan


def _parse(cmd: list[str]) -> argparse.Namespace:
    assert cmd[0] == "r1-runtime"
    return RUNTIME.parse_args(cmd[1:])


@pytest.mark.parametrize("spec", [
    pytest.param({}, id="defaults"),
    pytest.param({"model": {"variant": "UD-IQ1_S"}, "inference": {
        "ctxSize": 163840, "parallel": 64, "threads": 512, "cacheTypeK": "iq4_nl", "cacheTypeV": "q8_0",
        "flashAttention": True, "stopOnLoop": True, "canary": False,
        "sampling": {"temperature": 2, "minP": 1, "topP": 1, "topK": 1000}}}, id="upper-bounds"),
    pytest.param({"inference": {"ctxSize": 512, "parallel": 2, "threads": 1,
                                "sampling": {"temperature": 0, "minP": 0, "topP": 0.01, "topK": 0}}}, id="lower-bounds"),
])
def test_every_rendered_serve_flag_parses_to_the_value_the_operator_meant(spec):
    cmd, s, plan = _render(spec)
    args = _parse(cmd)
    inf, smp = s.inference, s.inference.sampling
    want = {"model": mf.CACHE_MOUNT, "port": S.runtime_port, "variant": plan["variant"], "alias": "r1",
            "n_gpu_layers": plan["nGpuLayers"], "ctx_size": inf.ctx_size, "parallel": inf.parallel,
            "cache_type_k": inf.cache_type_k, "cache_type_v": inf.cache_type_v, "flash_attn": inf.flash_attention,
            "threads": inf.threads, "temperature": smp.temperature, "min_p": smp.min_p, "top_p": smp.top_p,
            "top_k": smp.top_k, "stop_on_loop": inf.stop_on_loop, "canary": inf.canary,
            "tensor_split": ",".join(map(str, plan["tensorSplit"])),
            "shutdown_grace": float(S.shutdown_grace_s)}
    assert {k: getattr(args, k) for k in want} == want
    # the cross-flag rules the runtime applies at start-up hold for anything the CRD admits
    assert contract.inference_problems(args.ctx_size, args.parallel, args.cache_type_v, args.flash_attn) == []


def test_the_rendered_fetch_command_parses_too():
    s = R1DeploymentSpec.model_validate({"model": {"revision": "v2"}, "cache": {"keepShards": True}})
    args = _parse(mf.fetch_command(s, "UD-IQ1_S"))
    assert (args.repo, args.variant, args.revision, args.dest) == (R1_REPO, "UD-IQ1_S", "v2", mf.CACHE_MOUNT)
    assert args.merge and args.keep_shards and args.progress_interval == 10.0


def _crd_inference() -> dict:
    crd = yaml.safe_load(crd_yaml())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    inf = spec["inference"]["properties"]
    return {"ctx_size": inf["ctxSize"], "parallel": inf["parallel"], "threads": inf["threads"],
            "temperature": inf["sampling"]["properties"]["temperature"],
            "min_p": inf["sampling"]["properties"]["minP"], "top_p": inf["sampling"]["properties"]["topP"],
            "top_k": inf["sampling"]["properties"]["topK"],
            "cache_type_k": inf["cacheTypeK"], "cache_type_v": inf["cacheTypeV"]}


@pytest.mark.parametrize("dest", list(_crd_inference()))
def test_crd_bounds_defaults_and_choices_are_the_runtime_flags(dest):
    field, flag = _crd_inference()[dest], contract.SERVE_FLAGS[dest]
    assert field["default"] == flag.default
    if flag.choices:
        assert field["enum"] == list(flag.choices)
        return
    assert field["minimum"] == flag.lo and field["maximum"] == flag.hi
    assert field.get("exclusiveMinimum", False) == flag.lo_open


def _bounded_flags():
    return [f for f in contract.SERVE_FLAGS.values() if f.kind in (int, float) and (f.lo is not None or f.hi is not None)]


@pytest.mark.parametrize("flag", _bounded_flags(), ids=lambda f: f.flag)
def test_the_runtime_parser_enforces_each_bound(flag, capsys):
    def parses(value) -> bool:
        try:
            RUNTIME.parse_args(["serve", "--model", "m.gguf", flag.flag, str(value)])
            return True
        except SystemExit:
            assert flag.flag in capsys.readouterr().err  # the error names the flag
            return False

    step = 1 if flag.kind is int else 0.001
    if flag.lo is not None:
        assert parses(flag.lo) is not flag.lo_open
        assert not parses(flag.lo - step)
        assert parses(flag.lo + step)
    if flag.hi is not None:
        assert parses(flag.hi) and not parses(flag.hi + step)


def test_cache_types_are_one_list_for_crd_planner_and_runtime():
    from r1_operator.planning.memory import RuntimeSettings

    runtime_choices = next(a.choices for a in RUNTIME._subparsers._group_actions[0].choices["serve"]._actions
                           if a.dest == "cache_type_k")
    assert list(runtime_choices) == list(contract.CACHE_TYPES) == _crd_inference()["cache_type_k"]["enum"]
    for name in contract.CACHE_TYPES:  # the planner sizes every type the runtime takes
        RuntimeSettings(cache_type_k=name).validate()
    with pytest.raises(ValueError, match="--cache-type-k"):
        RuntimeSettings(cache_type_k="q3_k").validate()


@pytest.mark.parametrize("variant", [v.name for v in catalog_for(R1_REPO).variants])
def test_cache_size_auto_holds_what_the_fetch_asks_for(variant, tmp_path: Path):
    """The volume `size: auto` asks for, less the filesystem's share, passes the fetch's own space check."""
    v = catalog_for(R1_REPO).get(variant)
    shard = v.size_bytes // v.shards
    files = [RemoteFile(f"DeepSeek-R1-{variant}/DeepSeek-R1-{variant}-{i:05d}-of-{v.shards:05d}.gguf",
                        shard + (v.size_bytes - shard * v.shards if i == v.shards else 0), "0" * 64)
             for i in range(1, v.shards + 1)]
    listing = Listing(R1_REPO, "c0ffee", files)
    for keep in (False, True):
        need, have = space_needed(tmp_path, listing, merge=True, keep_shards=keep)
        # every shard plus two merge windows (the merge consumes the shards), or with keepShards two copies
        assert have == 0 and need == v.size_bytes + (v.size_bytes if keep else contract.MERGE_SLACK_BYTES) + \
            contract.METADATA_SLACK_BYTES
        s = R1DeploymentSpec.model_validate({"model": {"variant": variant}, "cache": {"keepShards": keep}})
        plan = decide(s, 1, inventory([_node(2, 81920)], []), None).plan
        volume = int(mf.cache_size(s, plan).removesuffix("Gi")) << 30
        assert need <= volume * (1 - contract.FILESYSTEM_OVERHEAD) < need + (1 << 30)  # holds it, at most 1 GiB more
