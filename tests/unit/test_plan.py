"""Policy table tests on the dev cluster's node shapes and hypothetical hardware."""

from __future__ import annotations

import json

import pytest

from r1_operator.api.contract import MERGE_SLACK_BYTES
from r1_operator.dev.nodes import NodeShape, load_shapes
from r1_operator.planning.catalog import BUILTIN, R1_REPO
from r1_operator.planning.inventory import Toleration, hypothetical, inventory
from r1_operator.planning.memory import RuntimeSettings
from r1_operator.planning.evaluate import PlanRequest
from r1_operator.planning.plan import plan_cluster, plan_node

GiB = 1 << 30
CAT = BUILTIN[R1_REPO]


def dev_nodes(shapes=None):
    nodes = []
    for s in shapes or load_shapes():
        n = s.to_node()
        n["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
        nodes.append(n)
    return inventory(nodes)


@pytest.mark.parametrize(
    "node, variant, mode, blocks",
    [
        ("gpu-24g", "UD-IQ1_S", "mmap", 7),  # 64 GiB RAM: nothing fits in GPU + RAM, smallest variant memory-mapped
        ("gpu-80g", "UD-Q2_K_XL", "hybrid", 19),
        ("gpu-2x80g", "UD-Q2_K_XL", "hybrid", 37),
        ("cpu-only", "UD-Q2_K_XL", "cpu", 0),
    ],
)
def test_auto_plan_per_dev_node(node, variant, mode, blocks):
    cap = next(c for c in dev_nodes() if c.name == node)
    p = plan_node(CAT, cap, PlanRequest())
    assert (p.variant, p.mode, p.gpu_blocks) == (variant, mode, blocks)
    assert p.fits and p.reasons
    assert p.n_gpu_layers == (blocks + 1 if blocks else 0)  # llama.cpp counts the output head, offloaded first


def test_cluster_choice_prefers_the_better_variant_then_more_gpu_layers():
    best, plans, excluded = plan_cluster(CAT, dev_nodes(), PlanRequest())
    assert len(plans) == 4 and not excluded
    assert (best.node, best.variant, best.gpu_blocks) == ("gpu-2x80g", "UD-Q2_K_XL", 37)
    assert best.tensor_split == (1, 1) and best.gpus == 2


def test_auto_takes_the_largest_variant_that_fits_entirely_on_gpu():
    # 8×H200: everything fits on GPU; auto takes the best variant with all layers on GPU.
    p = plan_node(CAT, hypothetical(8, 141, 2048), PlanRequest())
    assert p.mode == "gpu" and p.variant == "UD-Q2_K_XL" and p.n_gpu_layers == 62
    # 2×80 GB with a short context: only UD-IQ1_S fits entirely on GPU, and auto prefers it over a bigger hybrid.
    short = PlanRequest(settings=RuntimeSettings(ctx_size=2048))
    p = plan_node(CAT, hypothetical(2, 80, 256), short)
    assert (p.variant, p.mode, p.n_gpu_layers) == ("UD-IQ1_S", "gpu", 62)
    assert any("UD-IQ1_M does not fit entirely in GPU memory" in r for r in p.reasons)
    # quality takes the largest that fits in GPU + RAM instead, with layers spilling to the CPU.
    q = plan_node(CAT, hypothetical(2, 80, 256), PlanRequest(policy="quality", settings=RuntimeSettings(ctx_size=2048)))
    assert q.variant == "UD-Q2_K_XL" and q.mode == "hybrid" and q.gpu_blocks < 61


def test_explicit_and_minimum_variant():
    node = hypothetical(1, 80, 512)
    assert plan_node(CAT, node, PlanRequest(variant="UD-IQ1_S")).variant == "UD-IQ1_S"
    p = plan_node(CAT, hypothetical(1, 24, 64), PlanRequest(min_variant="UD-IQ2_XXS"))
    assert p.variant == "UD-IQ2_XXS" and p.mode == "mmap"  # the smallest allowed variant, memory-mapped


def test_no_fit_states_the_numbers():
    best, plans, _ = plan_cluster(CAT, [hypothetical(0, 0, 16)], PlanRequest())
    assert not best.fits and best.variant is None
    text = " ".join(best.reasons)
    assert "RAM minus reserve is 8.0 GiB" in text and "the node has 16.0 GiB" in text


def test_mmap_plan_carries_a_warning():
    p = plan_node(CAT, hypothetical(1, 24, 64), PlanRequest())
    assert any("memory-mapped" in w for w in p.warnings)


def test_excluded_nodes_not_ready_cordoned_tainted_or_unselected():
    shapes = [
        NodeShape(name="tainted", gpus=1, gpuMemoryMiB=81920, memory="512Gi", taints=[{"key": "dedicated", "value": "llm", "effect": "NoSchedule"}]),
        NodeShape(name="cordoned", gpus=1, gpuMemoryMiB=81920, memory="512Gi", unschedulable=True),
        NodeShape(name="ok", memory="256Gi", labels={"pool": "llm"}),
    ]
    nodes = dev_nodes(shapes)
    best, plans, excluded = plan_cluster(CAT, nodes, PlanRequest())
    assert best.node == "ok"
    assert any("taint dedicated=llm:NoSchedule" in e for e in excluded)
    assert any("cordoned" in e for e in excluded)
    tolerated = PlanRequest(tolerations=(Toleration("dedicated", "Exists"),))
    assert plan_cluster(CAT, nodes, tolerated)[0].node == "tainted"
    selected = PlanRequest(node_selector=(("pool", "gpu"),), tolerations=(Toleration("dedicated", "Exists"),))
    best, _, excluded = plan_cluster(CAT, nodes, selected)
    assert not best.fits and any("nodeSelector pool=gpu" in e for e in excluded)


def test_gpus_in_use_reduce_what_a_node_offers():
    (free,) = dev_nodes([NodeShape(name="n", gpus=2, gpuMemoryMiB=81920, memory="256Gi")])
    from dataclasses import replace

    half = replace(free, gpus_used=1)
    assert plan_node(CAT, half, PlanRequest()).gpus == 1
    assert plan_node(CAT, free, PlanRequest()).gpus == 2


def test_plan_memory_never_exceeds_what_it_claims_fits():
    for node in dev_nodes():
        p = plan_node(CAT, node, PlanRequest())
        for d in p.memory[:-1]:
            assert d.total <= node.gpu_memory_bytes - GiB
        if p.mode in ("gpu", "hybrid", "cpu"):
            assert p.memory[-1].total <= node.ram_bytes - 8 * GiB


def test_the_one_serialization_carries_llama_cpp_units_and_the_peak_disk():
    p = plan_node(CAT, hypothetical(2, 80, 512), PlanRequest())
    d = json.loads(json.dumps(p.as_dict()))
    assert (d["variant"], d["nGpuLayers"], d["nLayers"]) == (p.variant, p.gpu_blocks + 1, 61)
    assert d["gpuLayers"] == f"{p.gpu_blocks + 1}/62" and d["tensorSplit"] == [1, 1]
    # the cache peak: every file plus two merge windows, since the merge consumes the shards as it copies
    v = CAT.get(p.variant)
    assert d["modelBytes"] == v.size_bytes and d["diskBytes"] == v.size_bytes + MERGE_SLACK_BYTES + (64 << 10)
    assert plan_node(CAT, hypothetical(2, 80, 512), PlanRequest(keep_shards=True)).disk_bytes >= 2 * v.size_bytes
    assert [m["device"] for m in d["memory"]] == ["gpu0", "gpu1", "cpu"]
    assert d["cpuMemoryBytes"] == p.memory[-1].total


def test_invalid_settings_are_rejected_with_the_field():
    with pytest.raises(ValueError, match="needs --flash-attn"):
        plan_node(CAT, hypothetical(1, 80, 512), PlanRequest(settings=RuntimeSettings(cache_type_v="q4_0")))
    with pytest.raises(ValueError, match="policy"):
        plan_node(CAT, hypothetical(1, 80, 512), PlanRequest(policy="fastest"))
    with pytest.raises(ValueError, match="--ctx-size must be >= 512"):
        plan_node(CAT, hypothetical(1, 80, 512), PlanRequest(settings=RuntimeSettings(ctx_size=10)))


def test_small_disk_is_warned_about():
    p = plan_node(CAT, hypothetical(1, 80, 512, disk_gb=100), PlanRequest())
    assert any("model cache needs" in w and "100.0 GiB" in w for w in p.warnings)
    assert p.disk_bytes > 200 * GiB


def test_a_tied_output_head_is_counted_once_on_the_cpu_and_again_on_a_gpu(tmp_path):
    """SmolLM2 has no output.weight: llama.cpp's head reads token_embd on the CPU, and copies it to a GPU that holds
    the output layer. A plan without GPUs is mode cpu."""
    from r1_devtools.models import smollm2_path

    from r1_operator.modelinfo.describe import describe_local
    from r1_operator.planning.layout import device_layout
    from r1_operator.planning.memory import RuntimeSettings

    m = describe_local(smollm2_path())
    assert m.tied_output_bytes > 0 and m.tied_output_bytes == m.input_bytes
    s = RuntimeSettings()
    (cpu,) = device_layout(m, s, 0, 0)
    assert cpu.weights == m.tensor_bytes  # every tensor once
    gpu, cpu = device_layout(m, s, 1, 1)  # only the output layer on the GPU: token_embd stays, a copy goes
    assert gpu.weights == m.output_bytes and cpu.weights + gpu.weights == m.tensor_bytes + m.tied_output_bytes
