"""Think splitting, stop strings and loop detection, fed piece by piece as tokens arrive."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from r1_runtime.server.textproc import LoopDetector, StopMatcher, ThinkSplitter


def run_splitter(pieces: list[str], in_think: bool) -> tuple[str, str]:
    sp = ThinkSplitter(in_think=in_think)
    r, c = [], []
    for p in pieces:
        a, b = sp.feed(p)
        r.append(a)
        c.append(b)
    a, b = sp.flush()
    return "".join(r) + a, "".join(c) + b


def test_r1_output_after_prompt_opened_think():
    assert run_splitter(["Let me", " think.</th", "ink>\n\n", "The answer", " is 4."], True) == (
        "Let me think.", "The answer is 4.")


def test_think_block_opened_by_the_model():
    assert run_splitter(["<thi", "nk>\nhmm", "</think>", "\n\nok"], False) == ("\nhmm", "ok")


def test_no_think_block_is_all_content():
    assert run_splitter(["Hello", " <think> is a tag"], False) == ("", "Hello <think> is a tag")


def test_unclosed_block_is_all_reasoning():
    assert run_splitter(["still thinking </thi"], True) == ("still thinking </thi", "")


@given(st.text(alphabet="ab<>/thinkx\n", max_size=40), st.text(alphabet="ab<>/x\n ", max_size=40),
       st.lists(st.integers(min_value=1, max_value=7), max_size=30))
def test_splitting_does_not_depend_on_piece_boundaries(reasoning, content, cuts):
    reasoning = reasoning.replace("</think>", "")
    text = reasoning + "</think>" + content
    pieces, i = [], 0
    for n in cuts:
        pieces.append(text[i:i + n])
        i += n
    pieces.append(text[i:])
    whole = run_splitter([text], True)
    assert run_splitter(pieces, True) == whole
    assert whole == (reasoning, content.lstrip("\n"))


def test_stop_string_across_pieces():
    m = StopMatcher(["END", "\n\n"])
    out = [m.feed(p) for p in ["abc E", "N", "D more"]]
    assert out == [("abc ", False), ("", False), ("", True)]
    m = StopMatcher(["END"])
    assert m.feed("abc EN") == ("abc ", False)
    assert m.feed("x") == ("ENx", False)


def test_loop_detector_finds_the_blogs_loop_and_not_normal_text():
    d = LoopDetector()
    colours = [11, 12, 13]  # "Colours with dark"
    hits = [d.add(t) for t in [1, 2, 3, 4, 5] + colours * 20]
    assert hits[-1] and d.period == 3
    assert hits.index(True) == 5 + 48 - 1  # flagged once the loop spans 48 tokens
    d = LoopDetector()
    import random

    rng = random.Random(0)
    assert not any(d.add(rng.randrange(1000)) for _ in range(5000))


def test_loop_detector_long_period():
    d = LoopDetector(max_period=64)
    sentence = list(range(100, 140))  # a 40-token sentence repeated
    assert not any(d.add(t) for t in sentence * 2 + sentence[:7])
    assert any([d.add(t) for t in sentence[7:] + sentence[:10]])
    assert d.period == 40
