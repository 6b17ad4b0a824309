"""The fetch's range bookkeeping (pure file work): the journal of written spans, what is still missing."""

from __future__ import annotations

from r1_operator.api.contract import FETCH_SEGMENT_BYTES
from r1_runtime.cache.download import RemoteFile, _File, _merged, journal_path, partial_path, written_spans

MiB = 1 << 20


def test_spans_merge_and_the_missing_ranges_are_cut_to_the_range_size(tmp_path):
    assert _merged([(5, 9), (0, 3), (3, 5), (20, 30), (25, 28)]) == [(0, 9), (20, 30)]
    size = 3 * FETCH_SEGMENT_BYTES + 5
    job = _File(RemoteFile("m.gguf", size, "x"), tmp_path / "m.gguf")
    job.spans = [(10, 20), (FETCH_SEGMENT_BYTES, 2 * FETCH_SEGMENT_BYTES)]
    assert job.missing() == [(0, 10), (20, FETCH_SEGMENT_BYTES), (2 * FETCH_SEGMENT_BYTES, 3 * FETCH_SEGMENT_BYTES),
                             (3 * FETCH_SEGMENT_BYTES, size)]
    assert job.prefix() == 0
    job.spans = [(0, size)]
    assert job.missing() == [] and job.prefix() == size


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
