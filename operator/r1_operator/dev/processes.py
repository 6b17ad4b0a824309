"""The dev cluster's processes: finding the built binaries, free ports, spawning, liveness, stopping groups."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class ClusterError(RuntimeError):
    """The dev cluster could not be started or used; the message says why and where the logs are."""


def find_binary(name: str) -> Path:
    """Look in $R1_BIN_DIR, next to the running Python (the venv), then on PATH."""
    candidates = []
    if os.environ.get("R1_BIN_DIR"):
        candidates.append(Path(os.environ["R1_BIN_DIR"]) / name)
    candidates.append(Path(sys.executable).parent / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ClusterError(f"{name} not found (looked in {', '.join(map(str, candidates))} and PATH); run 'make setup' to build it")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def spawn(state, component: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Start a component in its own process group, its output in the state's logs; record its pid."""
    state.logs.mkdir(parents=True, exist_ok=True)
    log = open(state.logs / f"{component}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # own process group: outlives r1ctl, killed as a group by down()
        cwd=state.root,
        env=env,
    )
    log.close()
    state.pids[component] = proc.pid
    state.save()


def stop_group(pid: int, grace: float) -> bool:
    """SIGTERM the process group, SIGKILL it after `grace` seconds; True when SIGKILL was needed."""
    if not alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):
            return False
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    for _ in range(100):
        if not alive(pid):
            return True
        time.sleep(0.05)
    raise ClusterError(f"process {pid} survived SIGKILL")
