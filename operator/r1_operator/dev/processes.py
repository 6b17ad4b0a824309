"""The dev cluster's processes: finding the built binaries, free ports, spawning, liveness, stopping groups."""

from __future__ import annotations

import os
import random
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
    return free_ports(1)[0]


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports free now, below the kernel's ephemeral range where one exists.

    Ports handed out by bind(0) come from the ephemeral range, which every outgoing connection on the host also
    draws from: one of those can take the port between our check and the component's own bind. Below that range
    only listeners compete. All `n` stay bound until all are chosen, so none is handed out twice."""
    lo, _ = _ephemeral_range()
    held: list[socket.socket] = []
    try:
        for _ in range(200 if lo > 11000 else 0):
            if len(held) == n:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", random.randrange(10000, lo)))
            except OSError:
                s.close()
                continue
            held.append(s)
        while len(held) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def log_tail(path: Path, lines: int = 12) -> str:
    """The last lines of a component's log, for an error message; empty when there is no log."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


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
