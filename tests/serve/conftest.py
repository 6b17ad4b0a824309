"""Fixtures for tests/serve: the models; servers come from tests/serving.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from r1_devtools.models import smollm2_path
from r1_devtools.serving import running_server


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return smollm2_path()


@pytest.fixture(scope="session")
def r1_mini(tmp_path_factory) -> Path:
    """A miniature DeepSeek-R1-shaped model with R1's chat template (generation prompt opens <think>)."""
    from r1_devtools.testmodel import write_test_model

    (path,) = write_test_model(tmp_path_factory.mktemp("r1mini") / "DeepSeek-R1-UD-IQ1_S.gguf", seed=5)
    return path


@pytest.fixture(scope="module")
def smol_server(smollm2):
    with running_server(smollm2, "--parallel", "4", "--ctx-size", "4096", "--max-queue", "8") as s:
        yield s


@pytest.fixture(scope="module")
def r1_server(r1_mini):
    with running_server(r1_mini, "--parallel", "2", "--ctx-size", "2048", "--variant", "UD-IQ1_S") as s:
        yield s
