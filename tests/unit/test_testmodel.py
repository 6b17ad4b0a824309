"""The miniature R1 generator writes what llama.cpp expects (checked here with gguf-py)."""

from __future__ import annotations

import hashlib

import gguf
import pytest

from r1_devtools.testmodel import ModelShape, _partition, build_vocab, shape_from_options, write_test_model


def _sha(paths) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = write_test_model(tmp_path / "a" / "m.gguf", seed=7)
    b = write_test_model(tmp_path / "b" / "m.gguf", seed=7)
    c = write_test_model(tmp_path / "c" / "m.gguf", seed=8)
    assert _sha(a) == _sha(b)
    assert _sha(a) != _sha(c)


def test_deepseek2_header_and_r1_tensor_layout(tmp_path):
    shape = ModelShape(n_layer=4, n_dense=1)
    (path,) = write_test_model(tmp_path / "m.gguf", shape)
    r = gguf.GGUFReader(path)
    assert _field(r, "general.architecture") == "deepseek2"
    assert _field(r, "deepseek2.block_count") == 4
    assert _field(r, "deepseek2.leading_dense_block_count") == 1
    assert _field(r, "deepseek2.expert_shared_count") == 1
    assert _field(r, "deepseek2.expert_gating_func") == int(gguf.ExpertGatingFuncType.SIGMOID)
    assert _field(r, "tokenizer.ggml.model") == "gpt2"
    names = {t.name for t in r.tensors}
    # 1 dense block (12 tensors) + 3 MoE blocks (17 each) + 3 globals, like R1's 3x12 + 58x17 + 3.
    assert len(names) == 12 + 3 * 17 + 3
    assert "blk.0.ffn_gate.weight" in names and "blk.0.ffn_gate_exps.weight" not in names
    assert {"blk.1.attn_kv_b.weight", "blk.1.ffn_gate_exps.weight", "blk.1.ffn_down_shexp.weight", "blk.1.exp_probs_b.bias"} <= names
    exps = next(t for t in r.tensors if t.name == "blk.1.ffn_gate_exps.weight")
    assert list(exps.shape) == [shape.n_embd, shape.n_ff_exp, shape.n_expert]  # GGUF ne order


def test_mla_layout_uses_k_b_and_v_b(tmp_path):
    (path,) = write_test_model(tmp_path / "m.gguf", ModelShape(layout="mla"))
    r = gguf.GGUFReader(path)
    names = {t.name for t in r.tensors}
    assert "blk.0.attn_k_b.weight" in names and "blk.0.attn_kv_b.weight" not in names
    assert _field(r, "deepseek2.attention.key_length_mla") == 64


def test_tokenizer_has_r1_special_tokens_and_template(tmp_path):
    (path,) = write_test_model(tmp_path / "m.gguf")
    r = gguf.GGUFReader(path)
    tokens = _field(r, "tokenizer.ggml.tokens")
    for special in ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"):
        assert special in tokens
    assert tokens.index("<｜begin▁of▁sentence｜>") == _field(r, "tokenizer.ggml.bos_token_id") == 0
    assert "<｜User｜>" in _field(r, "tokenizer.chat_template")
    assert len(build_vocab().merges) > 0


@pytest.mark.parametrize("shards", [2, 3, 5])
def test_split_set_is_named_like_the_real_files(tmp_path, shards):
    files = write_test_model(tmp_path / "DeepSeek-R1-UD-IQ1_S.gguf", n_shards=shards)
    assert [f.name for f in files] == [f"DeepSeek-R1-UD-IQ1_S-{i:05d}-of-{shards:05d}.gguf" for i in range(1, shards + 1)]
    total = 0
    for i, f in enumerate(files):
        r = gguf.GGUFReader(f)
        assert _field(r, "split.no") == i
        assert _field(r, "split.count") == shards
        total += len(r.tensors)
        assert len(r.tensors) > 0
    assert total == _field(gguf.GGUFReader(files[0]), "split.tensors.count")
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_q8_0_weights(tmp_path):
    (path,) = write_test_model(tmp_path / "m.gguf", ModelShape(weight_type="q8_0"))
    r = gguf.GGUFReader(path)
    t = next(t for t in r.tensors if t.name == "blk.1.ffn_up_exps.weight")
    assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0


def test_partition_gives_exactly_n_nonempty_groups():
    for n_items, n in [(9, 4), (10, 4), (40, 3), (5, 5), (64, 2)]:
        cuts = _partition([1] * n_items, n)
        bounds = [0, *cuts, n_items]
        assert len(bounds) - 1 == n
        assert all(b > a for a, b in zip(bounds, bounds[1:]))
    with pytest.raises(ValueError):
        _partition([1, 1], 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"layout": "nope"}, "layout"), ({"weight_type": "q4_k"}, "weight type"), ({"n_dense": 9}, "n_dense"), ({"n_expert_used": 9}, "n_expert_used")],
)
def test_bad_shapes_are_rejected(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_test_model(tmp_path / "m.gguf", ModelShape(**kwargs))
    assert not list(tmp_path.iterdir())


def test_unknown_preset_and_option():
    with pytest.raises(ValueError, match="preset"):
        shape_from_options("huge")
    with pytest.raises(ValueError, match="unknown shape options"):
        shape_from_options("tiny", colour=1)
