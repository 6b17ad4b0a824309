"""Properties of the planner over arbitrary hardware (hypothesis)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from r1_operator.planning.catalog import BUILTIN, R1_REPO
from r1_operator.planning.inventory import hypothetical
from r1_operator.planning.memory import RuntimeSettings
from r1_operator.planning.evaluate import PlanRequest
from r1_operator.planning.layout import max_gpu_layers
from r1_operator.planning.plan import plan_cluster, plan_node

GiB = 1 << 30
CAT = BUILTIN[R1_REPO]
VARIANTS = st.sampled_from([v.name for v in CAT.variants])
GPUS = st.integers(0, 8)
GPU_GB = st.integers(8, 200)
RAM_GB = st.integers(4, 4096)
REQS = st.builds(
    PlanRequest,
    policy=st.sampled_from(["auto", "quality"]),
    offload=st.sampled_from(["estimate", "formula"]),
    settings=st.builds(RuntimeSettings, ctx_size=st.sampled_from([2048, 8192, 32768])),
)
SETTINGS = settings(max_examples=150, deadline=None)


@SETTINGS
@given(VARIANTS, st.integers(1, 8), GPU_GB, st.integers(1, 64), st.sampled_from([2048, 8192, 65536]))
def test_more_vram_never_gives_fewer_gpu_layers(variant, gpus, gb, extra, ctx):
    m = CAT.get(variant).facts
    s = RuntimeSettings(ctx_size=ctx)
    assert max_gpu_layers(m, s, gpus, (gb + extra) * GiB) >= max_gpu_layers(m, s, gpus, gb * GiB)


@SETTINGS
@given(VARIANTS, GPUS, GPU_GB, RAM_GB, st.integers(0, 64), st.integers(0, 512), st.sampled_from(["estimate", "formula"]))
def test_more_memory_for_a_fixed_variant_never_gives_fewer_layers(variant, gpus, gb, ram, extra_gpu, extra_ram, offload):
    req = PlanRequest(variant=variant, offload=offload)
    small = plan_node(CAT, hypothetical(gpus, gb, ram), req)
    big = plan_node(CAT, hypothetical(gpus, gb + extra_gpu, ram + extra_ram), req)
    assert big.n_gpu_layers >= small.n_gpu_layers


@SETTINGS
@given(REQS, GPUS, GPU_GB, RAM_GB, st.integers(0, 64), st.integers(0, 512))
def test_more_memory_never_turns_a_fit_into_no_fit(req, gpus, gb, ram, extra_gpu, extra_ram):
    small = plan_node(CAT, hypothetical(gpus, gb, ram), req)
    big = plan_node(CAT, hypothetical(gpus, gb + extra_gpu, ram + extra_ram), req)
    assert big.fits or not small.fits


@SETTINGS
@given(REQS, GPUS, GPU_GB, RAM_GB)
def test_plans_are_bounded_and_honest(req, gpus, gb, ram):
    node = hypothetical(gpus, gb, ram)
    p = plan_node(CAT, node, req)
    assert 0 <= p.n_gpu_layers <= p.n_layers + 1
    assert p.gpus <= gpus
    if p.n_gpu_layers:  # the GPUs requested are exactly the ones the memory layout was checked on
        assert len(p.memory) - 1 == p.gpus
        assert len(p.tensor_split) == (p.gpus if p.gpus > 1 else 0)
    if p.fits and req.offload == "estimate":
        for d in p.memory[:-1]:  # never a GPU over what the plan claims fits
            assert d.total <= node.gpu_memory_bytes - req.gpu_headroom_bytes
    if p.mode in ("gpu", "hybrid", "cpu"):
        assert p.memory[-1].total <= node.ram_bytes - req.ram_reserve_bytes


@SETTINGS
@given(GPUS, GPU_GB, RAM_GB, st.sampled_from([2048, 8192]))
def test_auto_never_leaves_layers_on_cpu_when_some_variant_fits_entirely(gpus, gb, ram, ctx):
    node = hypothetical(gpus, gb, ram)
    s = RuntimeSettings(ctx_size=ctx)
    full = [v for v in CAT.variants if plan_node(CAT, node, PlanRequest(variant=v.name, settings=s)).mode == "gpu"]
    p = plan_node(CAT, node, PlanRequest(settings=s))
    if full:
        assert p.mode == "gpu" and p.gpu_blocks == p.n_layers
        assert p.variant == max(full, key=lambda v: v.rank).name


@SETTINGS
@given(st.lists(st.tuples(GPUS, GPU_GB, RAM_GB), min_size=1, max_size=8), REQS, st.randoms())
def test_deterministic_whatever_the_node_order(shapes, req, rnd: random.Random):
    nodes = [hypothetical(g, gb, ram, name=f"n{i}") for i, (g, gb, ram) in enumerate(shapes)]
    a = plan_cluster(CAT, nodes, req)[0].as_dict()
    shuffled = nodes[:]
    rnd.shuffle(shuffled)
    b = plan_cluster(CAT, shuffled, req)[0].as_dict()
    assert a == b
