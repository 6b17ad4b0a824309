"""Durable, atomic files on the cache volume: a JSON file appears whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path

from r1_operator.api.contract import Exit


class CacheError(RuntimeError):
    """A fetch or merge that cannot complete; the message names the file or field and says what to do.

    exit_code is the contract's (r1_operator.api.contract.Exit); phase goes into the progress file."""

    def __init__(self, message: str, exit_code: int = Exit.RETRY, phase: str = "failed"):
        super().__init__(message)
        self.exit_code = int(exit_code)
        self.phase = phase


def write_json_atomic(path: Path, data: dict, durable: bool = True) -> None:
    """Write JSON under a temporary name and rename it; durable: fsync the file and its directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
