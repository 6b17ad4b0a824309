"""r1-runtime: the data-plane command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from r1_operator.api import contract
from r1_operator.api.contract import Exit


def _add_merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge a GGUF split set into one file (streaming, verified, atomic)",
                       description="Merge SHARD1 (NAME-00001-of-0000N.gguf) and its siblings into OUTPUT. "
                       "A marker OUTPUT.merged.json records the sha256; a second run does nothing.")
    p.add_argument("shard1")
    p.add_argument("output")
    p.add_argument("--keep-shards", action="store_true",
                   help="keep the shards: the volume then holds two copies of the set (default: the merge consumes "
                   "them as it copies, a window at a time, and deletes them once the merge is verified)")


def _merge(args: argparse.Namespace) -> int:
    from r1_runtime.cache.merge import MergeError, merge

    if args.keep_shards:
        print("r1-runtime merge: --keep-shards: the shards stay, so the volume holds two copies of the set",
              file=sys.stderr)
    try:
        info = merge(args.shard1, args.output, keep_shards=args.keep_shards)
    except MergeError as exc:
        print(f"r1-runtime merge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(info))
    return Exit.OK


def _add_fetch(sub: argparse._SubParsersAction) -> None:
    codes = ", ".join(f"{int(c)} {c.name.lower().replace('_', ' ')}" for c in Exit if c)
    p = sub.add_parser("fetch", help="download one GGUF variant (resumable, sha256-verified), optionally merged",
                       description="Download the files of REPO matching *VARIANT* into DEST. Honours HF_ENDPOINT and "
                       f"HF_TOKEN. A rerun resumes partial files and skips verified ones. Exit codes: {codes}.")
    contract.add_arguments(p, contract.FETCH_FLAGS)


def _fetch(args: argparse.Namespace) -> int:
    from r1_runtime.cache.fetch import fetch, termination_message
    from r1_runtime.cache.files import CacheError

    try:
        snap = fetch(args.repo, args.variant, args.dest, revision=args.revision or None, merge=args.merge,
                     keep_shards=args.keep_shards, interval=args.progress_interval, timeout=args.timeout,
                     connections=args.connections)
        code = Exit.OK
    except CacheError as exc:
        snap, code = {"phase": exc.phase, "error": str(exc)}, exc.exit_code
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
    return int(code)


def build_parser() -> argparse.ArgumentParser:
    """The whole r1-runtime parser; its fetch and serve flags come from r1_operator.api.contract."""
    from r1_runtime.server import serve

    parser = argparse.ArgumentParser(prog="r1-runtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_merge(sub)
    _add_fetch(sub)
    serve.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from r1_runtime.server import serve

    args = build_parser().parse_args(argv)
    try:
        return {"merge": _merge, "fetch": _fetch, "serve": serve.run}[args.command](args)
    except (ValueError, OSError) as exc:
        print(f"r1-runtime {args.command}: error: {exc}", file=sys.stderr)
        return Exit.BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
