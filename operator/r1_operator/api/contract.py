"""The contract between the planes: the runtime's flags, exit codes, files and progress format (dependency-free).

The operator renders `r1-runtime` command lines from these tables and the runtime builds
its argument parser from the same tables, so a flag, a bound or a default exists once.
Both planes import this module and nothing else of each other (import-linter contract in
pyproject.toml); it imports only the standard library.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

# ---------------------------------------------------------------- exit codes of fetch and merge


class Exit(IntEnum):
    OK = 0
    RETRY = 1  # transient (network, hub 5xx, lock held): a rerun resumes
    BAD_INPUT = 2  # repo, revision, variant, token or file unusable: fix the spec
    NO_SPACE = 3  # the volume is too small: grow spec.cache.size
    VERIFY_FAILED = 4  # sha256 mismatch twice: the mirror or the storage corrupts data
    OUT_OF_MEMORY = 5  # serve: llama.cpp could not allocate a buffer while loading; the termination message says which
    GPU_UNAVAILABLE = 6  # serve: llama.cpp sees fewer GPUs than --gpu-devices (CPU-only build, no driver or device)


PERMANENT_EXITS = (Exit.BAD_INPUT, Exit.NO_SPACE, Exit.VERIFY_FAILED)  # retrying cannot fix these

# ---------------------------------------------------------------- files on the cache volume

MANIFEST_FILE = ".r1-fetch.json"  # written last by fetch; names the model `serve --model DIR` loads
PROGRESS_FILE = ".r1-fetch-progress.json"
LOCK_FILE = ".r1-fetch.lock"
MERGED_MARKER_SUFFIX = ".merged.json"  # next to a merged file: its sha256 and the shards it came from
PROGRESS_MARK = "r1-progress="  # fetch progress lines end with this and a JSON object of PROGRESS_KEYS
PROGRESS_KEYS = ("phase", "bytesDone", "bytesTotal", "percent")
METADATA_SLACK_BYTES = 64 << 10  # manifest, progress, marker and lock files, a few filesystem blocks each


def partial_name(name: str) -> str:
    """A file grows under this name and gets its own only once verified."""
    return f".{name}.partial"


# ---------------------------------------------------------------- split GGUF sets

_SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class SplitName:
    stem: str
    no: int  # 1-based, as in the file name
    count: int

    def sibling(self, no: int) -> str:
        return f"{self.stem}-{no:05d}-of-{self.count:05d}.gguf"

    def names(self) -> list[str]:
        return [self.sibling(i) for i in range(1, self.count + 1)]

    @property
    def merged(self) -> str:
        return f"{self.stem}.gguf"


def parse_split(name: str) -> SplitName | None:
    """NAME-0000i-of-0000N.gguf → its parts; None for a file that is not part of a split set."""
    m = _SPLIT_RE.match(name)
    return SplitName(m.group("stem"), int(m.group("no")), int(m.group("count"))) if m else None


# The merge consumes its shards as it copies them, a window at a time: it copies a window, makes it durable,
# records it in its journal and then frees the window's source bytes (punching holes in the shard) while it
# copies the next. The merged copy and the remaining shards therefore never hold more than the set plus two
# windows.
FETCH_SEGMENT_BYTES = 64 << 20  # a download's byte ranges: one connection fetches one at a time
MERGE_WINDOW_BYTES = 128 << 20
MERGE_SLACK_WINDOWS = 3  # merged windows whose shard bytes may still be held: one freed, one recorded, one copied
MERGE_SLACK_BYTES = MERGE_SLACK_WINDOWS * MERGE_WINDOW_BYTES


def cache_peak_bytes(files_bytes: int, split_set_bytes: int, merge: bool, keep_shards: bool = False) -> int:
    """The most the cache volume holds during fetch (+ merge): every file, plus MERGE_SLACK_WINDOWS merge windows of a split set
    (`MERGE_SLACK_BYTES`), or with keep_shards the whole merged copy (two copies of the set).

    The operator sizes `cache.size: auto` from this; the fetch checks free space against it.
    """
    extra = (split_set_bytes if keep_shards else min(split_set_bytes, MERGE_SLACK_BYTES)) if merge else 0
    return files_bytes + extra + METADATA_SLACK_BYTES


# Room a filesystem takes from a volume: ext4 metadata (~2%) and the 5% reserved for root,
# which the runtime's non-root user cannot use.
FILESYSTEM_OVERHEAD = 0.08
GiB = 1 << 30


def cache_volume_bytes(peak_bytes: int) -> int:
    """The volume (whole MiB) whose filesystem holds peak_bytes, less the filesystem's share."""
    mib = 1 << 20
    return math.ceil(peak_bytes / (1 - FILESYSTEM_OVERHEAD) / mib) * mib


def cache_volume_gib(peak_bytes: int) -> int:
    """Whole GiB to request for a volume whose filesystem must hold peak_bytes (cache.size: auto)."""
    return max(math.ceil(cache_volume_bytes(peak_bytes) / GiB), 1)


# ---------------------------------------------------------------- KV cache and context rules

# llama.cpp's --cache-type-k/-v names → ggml type ids (llama-server's list).
CACHE_TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3, "iq4_nl": 20, "q5_0": 6, "q5_1": 7}
UNQUANTIZED_CACHE_TYPES = ("f32", "f16", "bf16")
MIN_TOKENS_PER_SEQUENCE = 256


def inference_problems(ctx_size: int, parallel: int, cache_type_v: str, flash_attn: bool) -> list[str]:
    """Cross-flag rules, each message naming the runtime flags (the CRD's CEL rules say the same)."""
    out = []
    if cache_type_v not in UNQUANTIZED_CACHE_TYPES and not flash_attn:
        out.append(f"--cache-type-v {cache_type_v} needs --flash-attn (llama.cpp quantizes V only with flash attention)")
    if parallel >= 1 and ctx_size // parallel < MIN_TOKENS_PER_SEQUENCE:
        out.append(f"--ctx-size {ctx_size} / --parallel {parallel} leaves under {MIN_TOKENS_PER_SEQUENCE} tokens "
                   "per sequence; raise the context or lower parallel")
    return out


# ---------------------------------------------------------------- flags


@dataclass(frozen=True)
class Flag:
    dest: str  # the Python name; the flag is --dest-with-dashes
    kind: type  # int, float, str or bool (a bool flag takes no value)
    default: Any
    help: str
    group: str = ""
    lo: float | None = None  # inclusive, unless lo_open
    hi: float | None = None  # inclusive
    lo_open: bool = False
    choices: tuple[str, ...] | None = None
    required: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")

    def check(self, value: Any) -> Any:
        """The value, if it is within the flag's type, bounds and choices; else ValueError naming the flag."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{self.flag} is a switch, got {value!r}")
            return value
        if self.kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))
                                          or (self.kind is int and not float(value).is_integer())):
            raise ValueError(f"{self.flag} must be {self.kind.__name__}, got {value!r}")
        if self.kind in (int, float):
            value = self.kind(value)
            low_bad = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
            if low_bad or (self.hi is not None and value > self.hi):
                raise ValueError(f"{self.flag} must be {self.bounds_text()}, got {value:g}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.flag} must be one of {', '.join(self.choices)}, got {value!r}")
        return value

    def parse(self, text: str) -> Any:
        """argparse's type function: text → checked value."""
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.kind.__name__}, got {text!r}") from None
        try:
            return self.check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def bounds_text(self) -> str:
        lo = "" if self.lo is None else f"{'>' if self.lo_open else '>='} {self.lo:g}"
        hi = "" if self.hi is None else f"<= {self.hi:g}"
        return " and ".join(x for x in (lo, hi) if x)

    def render(self, value: Any) -> list[str]:
        value = self.check(value)
        if self.kind is bool:
            return [self.flag] if value else []
        return [self.flag, repr(value) if self.kind is float else str(value)]


def _flags(*flags: Flag) -> dict[str, Flag]:
    return {f.dest: f for f in flags}


SAMPLING_DEFAULTS = {"temperature": 0.6, "min_p": 0.05, "top_p": 1.0, "top_k": 0, "seed": 3407}  # the source blog's

_PLACE, _SAMPLE, _LIMITS, _LOOPS = ("placement and memory (as planned by the operator)",
                                    "sampling defaults (requests may override)", "limits", "degenerate output")

SERVE_FLAGS = _flags(
    Flag("model", str, None, "GGUF file (merged, or NAME-00001-of-0000N.gguf), or a cache directory filled by "
         f"`r1-runtime fetch` (its {MANIFEST_FILE} names the model)", required=True),
    Flag("host", str, "0.0.0.0", "address to listen on"),
    Flag("port", int, 8080, "port to listen on", lo=1, hi=65535),
    Flag("metrics_port", int, 0, "also serve /metrics alone on this port, so a NetworkPolicy can open it to the "
         "monitoring namespace without opening the API (0: only on --port)", lo=0, hi=65535),
    Flag("alias", str, "", "model id reported by /v1/models (default: the file name)"),
    Flag("variant", str, "", "variant name for the info metric, e.g. UD-IQ1_S"),
    Flag("n_gpu_layers", int, 0, "llama.cpp's --n-gpu-layers: layers on GPU, the output head counting as one "
         "(offloaded first)", _PLACE, lo=0, hi=1024),
    Flag("tensor_split", str, "", "comma-separated proportions per GPU, e.g. 1,1", _PLACE),
    Flag("gpu_devices", int, 0, "GPUs the plan gives the runtime: with --n-gpu-layers > 0, fewer seen by llama.cpp "
         "exits GPU_UNAVAILABLE before loading, naming the cause (0: no check)", _PLACE, lo=0, hi=64),
    Flag("ctx_size", int, 8192, "the whole KV cache in tokens, shared by the --parallel sequences", _PLACE,
         lo=512, hi=163840),
    Flag("cache_type_k", str, "q4_0", "K cache type", _PLACE, choices=tuple(CACHE_TYPES)),
    Flag("cache_type_v", str, "f16", "V cache type; a quantized one needs --flash-attn", _PLACE,
         choices=tuple(CACHE_TYPES)),
    Flag("flash_attn", bool, False, "use flash attention", _PLACE),
    Flag("threads", int, 0, "CPU threads; 0: the CPUs this process may use (cgroup quota and affinity)", _PLACE,
         lo=0, hi=512),
    Flag("parallel", int, 1, "sequences decoded together (slots)", _PLACE, lo=1, hi=64),
    Flag("n_batch", int, 512, "tokens per llama_decode call", _PLACE, lo=1, hi=8192),
    Flag("no_mmap", bool, False, "read the model into memory instead of memory-mapping it", _PLACE),
    Flag("seed", int, SAMPLING_DEFAULTS["seed"], "default sampling seed", _SAMPLE, lo=0, hi=2**32 - 1),
    Flag("temperature", float, SAMPLING_DEFAULTS["temperature"], "sampling temperature", _SAMPLE, lo=0, hi=2),
    Flag("min_p", float, SAMPLING_DEFAULTS["min_p"], "min-p cut-off", _SAMPLE, lo=0, hi=1),
    Flag("top_p", float, SAMPLING_DEFAULTS["top_p"], "nucleus cut-off", _SAMPLE, lo=0, lo_open=True, hi=1),
    Flag("top_k", int, SAMPLING_DEFAULTS["top_k"], "top-k cut-off (0: off)", _SAMPLE, lo=0, hi=1000),
    Flag("reasoning_format", str, "auto", "deepseek: return <think> text as reasoning_content (auto: when the chat "
         "template is R1's)", _SAMPLE, choices=("auto", "deepseek", "none")),
    Flag("max_queue", int, 16, "requests waiting for a slot before 429", _LIMITS, lo=0, hi=100000),
    Flag("max_tokens_cap", int, 4096, "upper bound on max_tokens", _LIMITS, lo=1, hi=163840),
    Flag("max_request_bytes", int, 4 << 20, "largest request body; a larger one gets 413 before it is parsed",
         _LIMITS, lo=1024, hi=1 << 30),
    Flag("max_messages", int, 4096, "most messages in a chat request; more get 400 before templating", _LIMITS,
         lo=1, hi=1000000),
    Flag("request_timeout", float, 600.0, "seconds per request", _LIMITS, lo=0, lo_open=True),
    Flag("shutdown_grace", float, 60.0, "seconds to finish in-flight requests on SIGTERM", _LIMITS, lo=0),
    Flag("api_key_env", str, "R1_API_KEY", "env var holding the bearer API key (unset: no key)", _LIMITS),
    Flag("slots", bool, False, "serve GET /slots (llama-server's): each slot's state and sampling settings, never "
         "its prompt or text", _LIMITS),
    Flag("planned_memory", str, "", "the plan's bytes per device as JSON, e.g. {\"cpu\": {\"weights\": N, "
         "\"kv_cache\": N, \"compute\": N}, \"gpu0\": {...}}: a failed allocation is reported against it", _PLACE),
    Flag("termination_log", str, "/dev/termination-log",
         "write a short JSON of a failed load here if the file exists (Kubernetes termination message)", _LIMITS),
    Flag("dev_simulated_gpu_free_bytes", int, 0, "DEV CLUSTERS ONLY, a mock of a GPU: fail the load as llama.cpp "
         "does when --planned-memory puts more than this on a GPU (0: off)", _PLACE, lo=0),
    Flag("dev_simulated_gpus", bool, False, "DEV CLUSTERS ONLY, the node's GPUs are simulated: --gpu-devices is "
         "not checked (llama.cpp there sees no GPU and runs every layer on the CPU)", _PLACE),
    Flag("dev_simulated_host_bytes", int, 0, "DEV CLUSTERS ONLY, a stand-in for a real model's host memory: hold "
         "this many bytes, written, from before the load to the end (0: off)", _PLACE, lo=0),
    Flag("stop_on_loop", bool, False, "stop looping generations (finish_reason 'repetition')", _LOOPS),
    Flag("canary", bool, False, "at start-up, fail readiness if a fixed prompt's output loops", _LOOPS),
    Flag("canary_seed", int, SAMPLING_DEFAULTS["seed"], "seed of the canary prompt", _LOOPS, lo=0, hi=2**32 - 1),
    Flag("canary_tokens", int, 256, "tokens the canary generates", _LOOPS, lo=1, hi=4096),
)

FETCH_FLAGS = _flags(
    Flag("repo", str, None, "e.g. unsloth/DeepSeek-R1-GGUF", required=True),
    Flag("variant", str, None, "e.g. UD-IQ1_S; selects files with allow_patterns=['*VARIANT*']", required=True),
    Flag("dest", str, None, "the cache volume directory", required=True),
    Flag("revision", str, "", "branch, tag or commit (default main)"),
    Flag("merge", bool, False, "merge a split set into one GGUF after verifying it"),
    Flag("keep_shards", bool, False, "with --merge, keep the shards: the volume holds two copies of the set "
         "(default: the merge consumes them as it copies)"),
    Flag("connections", int, 8, "HTTP connections at once: large files are fetched as byte ranges of "
         f"{FETCH_SEGMENT_BYTES >> 20} MiB, several files at once (1: one connection, the baseline)", lo=1, hi=64),
    Flag("progress_interval", float, 5.0, "seconds between progress lines", lo=0, lo_open=True),
    Flag("timeout", float, 60.0, "HTTP read timeout in seconds", lo=0, lo_open=True),
    Flag("termination_log", str, "/dev/termination-log",
         "write a short JSON summary here at exit if the file exists (Kubernetes termination message)"),
)


def render(flags: dict[str, Flag], values: dict[str, Any]) -> list[str]:
    """Command-line arguments for values (keyed by dest), in the table's order; every value is checked."""
    unknown = sorted(set(values) - set(flags))
    if unknown:
        raise ValueError(f"not runtime flags: {', '.join(unknown)}")
    missing = [f.flag for f in flags.values() if f.required and values.get(f.dest) is None]
    if missing:
        raise ValueError(f"required: {', '.join(missing)}")
    return [arg for dest, f in flags.items() if dest in values for arg in f.render(values[dest])]


def add_arguments(parser: argparse.ArgumentParser, flags: dict[str, Flag]) -> None:
    """The argparse arguments for a flag table (groups, defaults, bounds and choices from the table)."""
    groups: dict[str, Any] = {"": parser}
    for f in flags.values():
        target = groups.get(f.group) or groups.setdefault(f.group, parser.add_argument_group(f.group))
        bounds = f.bounds_text()
        help_ = f.help + (f" ({bounds})" if bounds else "") + ("" if f.default in (None, "", False)
                                                              else f"; default {f.default}")
        if f.kind is bool:
            target.add_argument(f.flag, dest=f.dest, action="store_true", help=f.help)
        else:
            target.add_argument(f.flag, dest=f.dest, type=f.parse, default=f.default, required=f.required,
                                choices=f.choices, help=help_)


# The runtime's queue gauges (llama-server's names): the autoscaler's signal is their sum over the replicas.
METRIC_REQUESTS_PROCESSING = "llamacpp:requests_processing"
METRIC_REQUESTS_DEFERRED = "llamacpp:requests_deferred"
