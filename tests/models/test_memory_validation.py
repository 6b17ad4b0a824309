"""The planner's memory model against the buffers llama.cpp really allocates (its load log)."""

from __future__ import annotations

import pytest

from r1_devtools import memcheck as mv

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return mv.run(tmp_path_factory.mktemp("mv"))


def test_every_model_shape_is_covered(rows):
    assert {r["model"] for r in rows} == {"r1-tiny", "r1-tiny-split3", "r1-small", "r1-wide-heads", "r1-mla", "smollm2-135m"}


def test_default_settings_within_5_percent(rows):
    for r in rows:
        if r["default"]:
            print(r["model"], r["ratio"])
            for kind, ratio in r["ratio"].items():
                assert 0.95 <= ratio <= 1.05, (r["model"], kind, r["predicted"][kind], r["actual"][kind])


def test_weights_and_kv_within_5_percent_in_every_setting(rows):
    for r in rows:
        for kind in ("weights", "kv_cache"):
            assert 0.95 <= r["ratio"][kind] <= 1.05, (r["model"], r["settings"], kind, r["ratio"][kind])


def test_compute_is_never_underestimated_in_other_settings(rows):
    """Outside the defaults (short context, flash attention) the estimate may be generous, never short."""
    for r in rows:
        print(r["model"], r["settings"], r["ratio"]["compute"])
        assert 0.95 <= r["ratio"]["compute"] <= 1.25, (r["model"], r["settings"], r["ratio"]["compute"])
