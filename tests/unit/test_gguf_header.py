"""The header-only GGUF reader agrees with gguf-py and rejects bad files with the file's name."""

from __future__ import annotations

import gguf
import pytest

from r1_operator.modelinfo.describe import describe_local
from r1_operator.api.gguf_header import GGUFError, SkippedArray, read_local
from r1_devtools.testmodel import ModelShape, write_test_model


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return write_test_model(tmp_path_factory.mktemp("h") / "R1.gguf", n_shards=3)


def test_matches_gguf_py(tmp_path, monkeypatch):
    from r1_operator.api import gguf_header

    monkeypatch.setattr(gguf_header, "MAX_KEEP_ARRAY", 16)  # summarise the vocabulary as real R1 headers are
    (path,) = write_test_model(tmp_path / "m.gguf", ModelShape(weight_type="q8_0"))
    ours = read_local(str(path))
    ref = gguf.GGUFReader(path)
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        assert a.type == int(b.tensor_type)
        assert a.dims == tuple(int(x) for x in b.shape)
        assert a.nbytes == int(b.n_bytes)
        assert ours.data_offset + a.offset == int(b.data_offset)
    assert ours.kv["deepseek2.block_count"] == 4
    assert isinstance(ours.kv["tokenizer.ggml.tokens"], SkippedArray)
    assert ours.kv["tokenizer.ggml.tokens"].length == len(ref.fields["tokenizer.ggml.tokens"].data)


def test_split_set_is_described_from_all_shards(split):
    facts = describe_local(split[0])
    single = describe_local(write_test_model(split[0].parent / "one" / "R1.gguf")[0])
    assert facts.n_shards == 3
    assert facts.tensor_bytes == single.tensor_bytes
    assert facts.block_bytes == single.block_bytes
    assert facts.n_layers == 4 and facts.arch == "deepseek2"


def test_missing_shard(split, tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    for p in split[:2]:
        (d / p.name).write_bytes(p.read_bytes())
    with pytest.raises(GGUFError, match="missing shard.*00003-of-00003"):
        describe_local(d / split[0].name)


def test_truncated_header_names_the_file(tmp_path):
    (path,) = write_test_model(tmp_path / "m.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(GGUFError, match="cut.gguf: truncated GGUF header"):
        read_local(str(cut))


def test_wrong_magic(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + b"\0" * 100)
    with pytest.raises(GGUFError, match="bad.gguf: not a GGUF file"):
        read_local(str(bad))


def test_unreadable_file(tmp_path):
    with pytest.raises(GGUFError, match="cannot open"):
        read_local(str(tmp_path / "nope.gguf"))


def test_shards_of_different_sets_disagree(tmp_path):
    a = write_test_model(tmp_path / "a" / "M.gguf", n_shards=3)
    b = write_test_model(tmp_path / "b" / "M.gguf", n_shards=2)
    mix = tmp_path / "mix"
    mix.mkdir()
    (mix / "M-00001-of-00003.gguf").write_bytes(a[0].read_bytes())
    (mix / "M-00002-of-00003.gguf").write_bytes(b[1].read_bytes())  # split.count 2, not 3
    (mix / "M-00003-of-00003.gguf").write_bytes(a[2].read_bytes())
    with pytest.raises(GGUFError, match="split"):
        describe_local(mix / "M-00001-of-00003.gguf")
