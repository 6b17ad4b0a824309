"""The dev cluster's port and log helpers (no cluster needed)."""

from __future__ import annotations

import socket

from r1_operator.dev import processes


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    lo, _ = processes._ephemeral_range()
    for _ in range(20):
        ports = processes.free_ports(5)
        assert len(set(ports)) == 5
        assert all(p < lo for p in ports), (ports, lo)
        for p in ports:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", p))


def test_free_ports_skip_a_port_held_by_a_listener(monkeypatch):
    taken, a, b = processes.free_ports(3)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", taken))
        held.listen()
        picks = iter([taken, a, b])
        monkeypatch.setattr(processes.random, "randrange", lambda lo, hi: next(picks))
        assert processes.free_ports(2) == [a, b]


def test_log_tail_gives_the_last_lines_and_nothing_for_a_missing_log(tmp_path):
    log = tmp_path / "etcd.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert processes.log_tail(log, 3) == "line 97\nline 98\nline 99"
    assert processes.log_tail(tmp_path / "missing.log") == ""
