"""Pure text handling for generations: think-block splitting, stop strings, loop detection."""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def held_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag (kept back until the next piece)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkSplitter:
    """Route generated text into reasoning (inside <think>…</think>) and content, piece by piece.

    DeepSeek-R1's template ends the prompt with ``<think>\\n``, so generation starts
    inside the block (``in_think=True``). Otherwise a ``<think>`` at the very start of
    the output opens one. Tags split across pieces are held back until they resolve.
    """

    def __init__(self, in_think: bool = False):
        self.in_think = in_think
        self.started = in_think  # whether an opening tag may still come
        self._buf = ""
        self._after_close = False

    def feed(self, piece: str) -> tuple[str, str]:
        """Return (reasoning, content) released by this piece."""
        self._buf += piece
        reasoning, content = [], []
        while self._buf:
            if self.in_think:
                i = self._buf.find(THINK_CLOSE)
                if i >= 0:
                    reasoning.append(self._buf[:i])
                    self._buf = self._buf[i + len(THINK_CLOSE):]
                    self.in_think = False
                    self._after_close = True
                    continue
                keep = held_suffix(self._buf, THINK_CLOSE)
                reasoning.append(self._buf[:len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
                break
            if not self.started:
                stripped = self._buf.lstrip()
                if stripped.startswith(THINK_OPEN):
                    self._buf = stripped[len(THINK_OPEN):]
                    self.in_think = self.started = True
                    continue
                if stripped and THINK_OPEN.startswith(stripped):
                    break  # could still become <think>
                self.started = True
            if self._after_close:  # the blank lines after </think> belong to neither part
                self._buf = self._buf.lstrip("\n")
                if not self._buf:
                    break
                self._after_close = False
            content.append(self._buf)
            self._buf = ""
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        rest, self._buf = self._buf, ""
        return (rest, "") if self.in_think else ("", rest)


class StopMatcher:
    """Hold back text that may be the start of a stop string; report when one is complete."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._buf = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Return (text safe to emit, stopped). Text from the stop string on is dropped."""
        self._buf += piece
        if not self.stops:
            out, self._buf = self._buf, ""
            return out, False
        hits = [i for s in self.stops if (i := self._buf.find(s)) >= 0]
        if hits:
            out = self._buf[:min(hits)]
            self._buf = ""
            return out, True
        keep = max(held_suffix(self._buf, s) for s in self.stops)
        out = self._buf[:len(self._buf) - keep]
        self._buf = self._buf[len(self._buf) - keep:]
        return out, False

    def flush(self) -> str:
        rest, self._buf = self._buf, ""
        return rest


class LoopDetector:
    """Detect a generation stuck repeating itself ("Colours with dark Colours with dark …").

    After each token it checks, for every period p up to `max_period`, how long the
    tail of the token sequence has been periodic with period p. A loop is a periodic
    tail spanning at least `min_span` tokens and at least `min_repeats` periods.
    The cost is O(max_period) per token.
    """

    def __init__(self, max_period: int = 64, min_span: int = 48, min_repeats: int = 3):
        self.max_period = max_period
        self.min_span = min_span
        self.min_repeats = min_repeats
        self._tokens: list[int] = []
        self._run = [0] * (max_period + 1)  # _run[p]: consecutive i with tok[i] == tok[i-p]
        self.detected = False
        self.period = 0

    def add(self, token: int) -> bool:
        t = self._tokens
        t.append(token)
        n = len(t)
        for p in range(1, min(self.max_period, n - 1) + 1):
            self._run[p] = self._run[p] + 1 if t[n - 1] == t[n - 1 - p] else 0
            span = self._run[p] + p
            if not self.detected and span >= self.min_span and span >= self.min_repeats * p:
                self.detected = True
                self.period = p
        if n > 4 * self.max_period + self.min_span:
            del t[: n - (self.max_period + 1)]  # only the last max_period tokens are compared
        return self.detected
