"""r1-dev: miniature R1 models and a local Hugging Face-compatible hub, for tests, the demo and benchmarks."""

from __future__ import annotations

import argparse
import json
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
    from r1_devtools.testmodel import shape_from_options, write_test_model

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="r1-dev", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_make_test_model(sub)
    hub = sub.add_parser("hub", help="serve ORG/NAME repos from a directory as a Hugging Face-compatible hub",
                         add_help=False)
    hub.add_argument("rest", nargs=argparse.REMAINDER)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hub"]:  # its own parser, -h included (argparse's REMAINDER would take -h as the parent's)
        from r1_devtools import hubcli

        return hubcli.main(argv[1:])
    args = parser.parse_args(argv)
    try:
        return _make_test_model(args)
    except (ValueError, OSError) as exc:
        print(f"r1-dev {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
