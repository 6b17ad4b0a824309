from __future__ import annotations


import pytest

from r1_operator.planning.catalog import BUILTIN, R1_REPO, catalog_for
from r1_operator.planning.layout import formula_layers

GiB = 1 << 30
CAT = BUILTIN[R1_REPO]


@pytest.mark.parametrize(
    "variant, vram_gib, expected",
    [
        # The blog's table, reproduced by its rule.
        ("UD-IQ1_S", 24, 7), ("UD-IQ1_S", 80, 33), ("UD-IQ1_S", 160, 61),
        ("UD-IQ1_M", 24, 5), ("UD-IQ1_M", 80, 26), ("UD-IQ1_M", 160, 57),
        ("UD-IQ2_XXS", 24, 4), ("UD-IQ2_XXS", 80, 22), ("UD-IQ2_XXS", 160, 49),
        ("UD-Q2_K_XL", 24, 2), ("UD-Q2_K_XL", 80, 19),
        # The table prints 32 here, but its own rule gives floor(160/212*61) - 4 = 42: the rule counts.
        ("UD-Q2_K_XL", 160, 42),
        ("UD-IQ1_S", 0, 0), ("UD-IQ1_S", 1000, 61),
    ],
)
def test_formula_reproduces_the_rule(variant, vram_gib, expected):
    v = CAT.get(variant)
    assert formula_layers(vram_gib * GiB, v.size_bytes, 61) == expected


def test_formula_is_exact_at_a_boundary():
    # 15/22 × 22 layers is exactly 15 (11 after the − 4); a float implementation computes 14.999999999999998
    # and answers 10.
    assert formula_layers(15 * GiB, 22 * GiB, 22) == 11
    # 24/183 × 61 is exactly 8 (the blog's 2.22-bit on 24 GB): 8 - 4.
    assert formula_layers(24 * GiB, 183 * GiB, 61) == 4


def test_catalog_sizes_match_the_published_ones_within_2_percent():
    for v in CAT.variants:
        assert len(v.facts.block_bytes) == v.facts.n_layers == 61
        assert abs(v.facts.tensor_bytes / v.size_bytes - 1) < 0.02, v.name


def test_r1_dense_blocks_are_much_smaller_than_moe_blocks():
    f = CAT.get("UD-IQ1_S").facts
    assert f.block_bytes[0] * 4 < f.block_bytes[10]
    assert f.output_bytes > 0 and f.input_bytes > 0


def test_catalog_ranks_and_unknown_names():
    assert [v.name for v in CAT.ranked()] == ["UD-Q2_K_XL", "UD-IQ2_XXS", "UD-IQ1_M", "UD-IQ1_S"]
    with pytest.raises(ValueError, match="unknown variant 'UD-NOPE'"):
        CAT.get("UD-NOPE")
    with pytest.raises(ValueError, match="no built-in catalog"):
        catalog_for("someone/else")
