"""Where every benchmark writes its figures: benchmarks/results/NAME.json and NAME.md."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def save(name: str, data, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip("\n") + "\n")


def run_in_workdir(main) -> None:
    """main(WORKDIR): the directory given as the first argument, else a temporary one under $HOME (a real disk,
    where /tmp may be memory), removed afterwards."""
    import sys
    import tempfile

    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory(dir=str(Path.home())) as d:
            main(Path(d))
