"""The on-disk spool: order, durability across reopen, torn tails, corruption, the size cap."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from tokenpulse.storage.spool import Spool, SpoolFull


def table(i: int, n: int = 3) -> pa.Table:
    return pa.table({"trace_id": [f"{i:032x}"] * n, "span_id": [f"{j:016x}" for j in range(n)], "batch": [i] * n})


def drain(spool: Spool) -> list[int]:
    out = []
    while (got := spool.peek()) is not None:
        pos, t = got
        out.append(t.column("batch")[0].as_py())
        spool.commit(pos)
    return out


def test_replays_in_order_and_survives_reopen(tmp_path):
    s = Spool(str(tmp_path), max_bytes=10**7, segment_bytes=2000)  # small segments: several files
    for i in range(20):
        s.append(table(i))
    assert s.records == 20 and len([f for f in os.listdir(tmp_path) if f.startswith("seg-")]) > 1
    pos, first = s.peek()
    s.commit(pos)
    s.close()
    s = Spool(str(tmp_path), max_bytes=10**7, segment_bytes=2000)  # a restart
    assert s.records == 19
    assert drain(s) == list(range(1, 20))
    assert s.empty() and s.peek() is None
    s.append(table(99))  # appends after a drain still come out
    assert drain(s) == [99]
    assert len([f for f in os.listdir(tmp_path) if f.startswith("seg-")]) <= 2  # used-up segments deleted


def test_a_torn_tail_is_truncated_at_open(tmp_path):
    s = Spool(str(tmp_path), max_bytes=10**7)
    s.append(table(1))
    s.append(table(2))
    s.close()
    seg = next(f for f in os.listdir(tmp_path) if f.startswith("seg-"))
    with open(tmp_path / seg, "ab") as fh:
        fh.write(b"TPS1\xff\x00\x00\x00partial")  # a crash in the middle of an append
    s = Spool(str(tmp_path), max_bytes=10**7)
    assert s.records == 2 and drain(s) == [1, 2]
    s.append(table(3))
    assert drain(s) == [3]


def test_a_corrupt_record_is_set_aside_and_counted(tmp_path):
    s = Spool(str(tmp_path), max_bytes=10**7)
    for i in range(3):
        s.append(table(i))
    s.close()
    seg = next(f for f in os.listdir(tmp_path) if f.startswith("seg-"))
    data = bytearray((tmp_path / seg).read_bytes())
    first_len = int.from_bytes(data[4:8], "little")
    data[12 + first_len + 12 + 40] ^= 0xFF  # flip a byte inside the second record's payload
    (tmp_path / seg).write_bytes(bytes(data))
    s = Spool(str(tmp_path), max_bytes=10**7)
    assert drain(s) == [0, 2]
    assert s.corrupt_records == 1 and any(f.startswith("corrupt-") for f in os.listdir(tmp_path))


def test_full_spool_refuses_new_batches_and_keeps_the_old(tmp_path):
    s = Spool(str(tmp_path), max_bytes=3000)
    n = 0
    with pytest.raises(SpoolFull):
        while True:
            s.append(table(n))
            n += 1
    assert n >= 1 and drain(s) == list(range(n))
    s.append(table(100))  # room again once replayed
    assert drain(s) == [100]


def test_one_process_per_spool_directory(tmp_path):
    import subprocess
    import sys

    s = Spool(str(tmp_path), max_bytes=10**6)
    code = ("import sys\nfrom tokenpulse.storage.spool import Spool, SpoolInUse\n"
            f"try:\n    Spool({str(tmp_path)!r}, 10**6)\nexcept SpoolInUse as e:\n    print(e); sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "in use by another tokenpulse process" in r.stdout
    s.close()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0  # free once closed


# ---------------------------------------------------------------- failed appends
import errno  # noqa: E402

from tokenpulse.storage import spool as spool_module  # noqa: E402


def _fail_after(nbytes: int, err: int):
    """An os.write that writes ``nbytes`` of the next call (a short write), then fails with ``err``."""
    state = {"left": nbytes}

    def write(fd, data):
        if state["left"] <= 0:
            raise OSError(err, os.strerror(err))
        n = os.write(fd, bytes(data[:state["left"]]))
        state["left"] -= n
        return n
    return write


def test_an_append_that_fails_midway_is_cut_back_and_later_records_replay(tmp_path, monkeypatch):
    s = Spool(str(tmp_path), max_bytes=10**7)
    s.append(table(1))
    s.append(table(2))
    size = sum(os.path.getsize(tmp_path / f) for f in os.listdir(tmp_path) if f.startswith("seg-"))
    monkeypatch.setattr(spool_module, "_write", _fail_after(100, errno.ENOSPC))  # half a record, then full
    with pytest.raises(OSError):
        s.append(table(3))
    monkeypatch.undo()
    assert sum(os.path.getsize(tmp_path / f) for f in os.listdir(tmp_path) if f.startswith("seg-")) == size
    assert s.records == 2
    s.append(table(4))  # an acknowledged append after the failure
    s.close()
    s = Spool(str(tmp_path), max_bytes=10**7)  # a restart finds no torn record to cut
    assert s.records == 3 and drain(s) == [1, 2, 4] and s.corrupt_records == 0


def test_fsync_eio_refuses_the_batch_and_leaves_no_uncounted_record(tmp_path, monkeypatch):
    s = Spool(str(tmp_path), max_bytes=10**7)
    s.append(table(1))

    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(spool_module, "_fsync", eio)
    with pytest.raises(OSError):
        s.append(table(2))  # written but not durable: refused, and cut back
    monkeypatch.undo()
    s.append(table(3))
    assert s.records == 2 and drain(s) == [1, 3]
    assert s.records == 0 and s.empty()  # never negative: the writer would spool for good


def test_short_writes_are_completed(tmp_path, monkeypatch):
    s = Spool(str(tmp_path), max_bytes=10**7)

    def short(fd, data):
        return os.write(fd, bytes(data[:7]))  # the kernel may take less than asked
    monkeypatch.setattr(spool_module, "_write", short)
    s.append(table(1))
    s.append(table(2))
    monkeypatch.undo()
    assert drain(s) == [1, 2]


def test_an_append_that_cannot_be_undone_stops_appends_and_keeps_the_rest(tmp_path, monkeypatch):
    s = Spool(str(tmp_path), max_bytes=10**7)
    s.append(table(1))
    monkeypatch.setattr(spool_module, "_write", _fail_after(50, errno.EIO))

    def no_truncate(fd, length):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(OSError):
        s.append(table(2))
    monkeypatch.undo()
    assert "could not be undone" in s.broken
    with pytest.raises(OSError, match="refuses appends"):
        s.append(table(3))  # never after half a record
    assert drain(s) == [1]  # what it holds still replays; the half record is a torn tail, not a record
    s.close()
    s = Spool(str(tmp_path), max_bytes=10**7)  # the restart cuts the torn tail: it was never acknowledged
    assert not s.broken and s.records == 0
    s.append(table(4))
    assert drain(s) == [4]


def test_a_cursor_that_cannot_be_written_is_kept_in_memory(tmp_path, monkeypatch):
    s = Spool(str(tmp_path), max_bytes=10**7)
    for i in range(3):
        s.append(table(i))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(s, "_write_cursor", full)
    pos, _ = s.peek()
    s.commit(pos)  # the disk refuses the cursor file: no exception for the replay thread
    assert s.cursor_errors == 1
    monkeypatch.undo()
    assert drain(s) == [1, 2]


def test_a_torn_record_inside_an_older_segment_is_set_aside(tmp_path):
    s = Spool(str(tmp_path), max_bytes=10**7, segment_bytes=1500)
    for i in range(6):
        s.append(table(i))
    s.close()
    segs = sorted(f for f in os.listdir(tmp_path) if f.startswith("seg-"))
    assert len(segs) > 1
    first = tmp_path / segs[0]
    data = bytearray(first.read_bytes())
    first_len = int.from_bytes(data[4:8], "little")
    data[12 + first_len + 4:12 + first_len + 8] = (10**8).to_bytes(4, "little")  # a length beyond the file
    first.write_bytes(bytes(data))
    s = Spool(str(tmp_path), max_bytes=10**7, segment_bytes=1500)
    got = drain(s)
    assert got[0] == 0 and got[-1] == 5  # later segments are not skipped
    assert s.corrupt_records == 1 and any(f.startswith("corrupt-") for f in os.listdir(tmp_path))
