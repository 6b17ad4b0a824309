"""r1-runtime: the data-plane command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence


def _add_make_test_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-test-model",
        help="write a miniature DeepSeek-R1-shaped GGUF (deepseek2, MoE + shared experts)",
        description="Write a deterministic miniature deepseek2 model, whole or as a split set named like the real files.",
    )
    p.add_argument("output", help="path of the unsplit file, e.g. out/DeepSeek-R1-UD-IQ1_S.gguf")
    p.add_argument("--preset", default="tiny", help="tiny (default) or small")
    p.add_argument("--shards", type=int, default=1, help="write a split set of N files (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=["legacy", "mla"], help="attention layout (default legacy, as in Unsloth's R1 files)")
    p.add_argument("--weight-type", choices=["f32", "f16", "q8_0"], help="type of the weight matrices (default f16)")
    for flag in ("n-embd", "n-layer", "n-dense", "n-head", "n-ff", "n-ff-exp", "n-expert", "n-expert-used", "n-expert-shared"):
        p.add_argument(f"--{flag}", type=int)
    p.add_argument("--name", default="r1-mini", help="general.name written into the header")


def _make_test_model(args: argparse.Namespace) -> int:
    from r1_runtime.ggufio.testmodel import shape_from_options, write_test_model

    overrides = {
        k: getattr(args, k)
        for k in ("n_embd", "n_layer", "n_dense", "n_head", "n_ff", "n_ff_exp", "n_expert", "n_expert_used", "n_expert_shared")
    }
    overrides["layout"] = args.layout
    overrides["weight_type"] = args.weight_type
    shape = shape_from_options(args.preset, **overrides)
    files = write_test_model(args.output, shape, n_shards=args.shards, seed=args.seed, name=args.name)
    print(json.dumps({"files": [str(f) for f in files]}))
    return 0


def _add_merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge a GGUF split set into one file (streaming, verified, atomic)",
                       description="Merge SHARD1 (NAME-00001-of-0000N.gguf) and its siblings into OUTPUT. "
                       "A marker OUTPUT.merged.json records the sha256; a second run does nothing.")
    p.add_argument("shard1")
    p.add_argument("output")
    p.add_argument("--keep-shards", action="store_true", help="keep the shards (default: delete them once the merge is verified)")


def _merge(args: argparse.Namespace) -> int:
    from r1_runtime.cache.merge import merge

    info = merge(args.shard1, args.output, keep_shards=args.keep_shards)
    print(json.dumps(info))
    return 0


def _add_fetch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="download one GGUF variant (resumable, sha256-verified), optionally merged",
                       description="Download the files of REPO matching *VARIANT* into DEST. Honours HF_ENDPOINT and "
                       "HF_TOKEN. A rerun resumes partial files and skips verified ones. Exit codes: 2 bad input, "
                       "3 not enough space, 4 verification failed, 1 other failures.")
    p.add_argument("--repo", required=True, help="e.g. unsloth/DeepSeek-R1-GGUF")
    p.add_argument("--variant", required=True, help="e.g. UD-IQ1_S; selects files with allow_patterns=['*VARIANT*']")
    p.add_argument("--dest", required=True, help="the cache volume directory")
    p.add_argument("--revision", help="branch, tag or commit (default main)")
    p.add_argument("--merge", action="store_true", help="merge a split set into one GGUF after verifying it")
    p.add_argument("--keep-shards", action="store_true", help="with --merge, keep the shards (default: delete them)")
    p.add_argument("--progress-interval", type=float, default=5.0, help="seconds between progress lines (default 5)")
    p.add_argument("--timeout", type=float, default=60.0, help="HTTP read timeout in seconds (default 60)")
    p.add_argument("--termination-log", default="/dev/termination-log",
                   help="write a short JSON summary here at exit if the file exists (Kubernetes termination message)")


def _fetch(args: argparse.Namespace) -> int:
    from r1_runtime.cache.fetch import FetchError, fetch, termination_message
    from r1_runtime.cache.merge import MergeError

    try:
        snap = fetch(args.repo, args.variant, args.dest, revision=args.revision, merge=args.merge,
                     keep_shards=args.keep_shards, interval=args.progress_interval, timeout=args.timeout)
        code = 0
    except FetchError as exc:
        snap, code = {"phase": exc.phase, "error": str(exc)}, exc.exit_code
    except MergeError as exc:
        snap, code = {"phase": "merge-failed", "error": str(exc)}, 2
    if os.path.exists(args.termination_log):
        try:
            with open(args.termination_log, "w") as f:
                f.write(termination_message(snap))
        except OSError:
            pass
    if code:
        print(f"r1-runtime fetch: error: {snap['error']}", file=sys.stderr)
    else:
        print(json.dumps(snap))
    return code


def _add_dev_hub(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dev-hub", help="serve ORG/NAME repos from a directory as a Hugging Face-compatible hub (tests, demo)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="r1-runtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_make_test_model(sub)
    _add_merge(sub)
    _add_fetch(sub)
    _add_dev_hub(sub)
    from r1_runtime.server import serve

    serve.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "dev-hub":
        from r1_runtime import devhub

        return devhub.main(args.rest)
    try:
        return {"make-test-model": _make_test_model, "merge": _merge, "fetch": _fetch, "serve": serve.run}[args.command](args)
    except (ValueError, OSError) as exc:
        print(f"r1-runtime {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
