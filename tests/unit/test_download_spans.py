"""The fetch's range bookkeeping (pure file work): the journal of written spans, what is still missing."""

from __future__ import annotations

from r1_operator.api.contract import FETCH_SEGMENT_BYTES
from r1_runtime.cache.download import RemoteFile, _File, _merged, journal_path, partial_path, range_bytes, \
    written_spans

MiB = 1 << 20


def test_spans_merge_and_the_missing_ranges_are_cut_to_the_range_size(tmp_path):
    assert _merged([(5, 9), (0, 3), (3, 5), (20, 30), (25, 28)]) == [(0, 9), (20, 30)]
    seg = FETCH_SEGMENT_BYTES
    size = 8 * seg + 5
    job = _File(RemoteFile("m.gguf", size, "x"), tmp_path / "m.gguf")
    job.spans = [(10, 20), (seg, 2 * seg)]
    assert job.missing(connections=1) == [(0, 10), (20, seg), *((i * seg, (i + 1) * seg) for i in range(2, 8)),
                                          (8 * seg, size)]
    assert job.prefix() == 0
    job.spans = [(0, size)]
    assert job.missing() == [] and job.prefix() == size


def test_a_file_gives_each_connection_at_least_four_ranges_down_to_4_mib():
    assert range_bytes(200 << 30, 8) == FETCH_SEGMENT_BYTES  # a real shard: 64 MiB ranges
    assert range_bytes(192 << 20, 8) == 6 << 20  # 32 ranges for 8 connections
    assert range_bytes(10 << 20, 8) == 4 << 20  # never below 4 MiB: a request per range
    assert range_bytes(192 << 20, 1) == 48 << 20


def test_the_journal_survives_a_torn_line_and_an_old_partial_counts_as_a_prefix(tmp_path):
    final = tmp_path / "m.gguf"
    size = 10 * MiB
    partial_path(final).write_bytes(b"\0" * (3 * MiB))  # a partial from a sequential download: no journal
    assert written_spans(final, size) == [(0, 3 * MiB)]
    job = _File(RemoteFile("m.gguf", size, "x"), final)
    job.open()  # the journal is written before the file is made sparse at its full size
    assert partial_path(final).stat().st_size == size and written_spans(final, size) == [(0, 3 * MiB)]
    job.record(5 * MiB, 6 * MiB)
    job.close()
    with open(journal_path(final), "a") as j:
        j.write("7340032 83")  # a line cut short by a kill
    assert written_spans(final, size) == [(0, 3 * MiB), (5 * MiB, 6 * MiB)]
    journal_path(final).write_text(f"0 {size + 1}\n-1 5\n")  # nothing outside the file is believed
    assert written_spans(final, size) == []
