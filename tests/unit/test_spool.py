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
