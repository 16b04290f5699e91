"""The spool: accepted spans on local disk while ClickHouse cannot take them.

When an insert fails with a retryable error, the writer appends the batch here,
``fsync``s, and only then acknowledges the Export; from then on new batches
follow it into the spool (so order is kept) until a replay thread has
inserted everything in order and the spool is empty again.

Layout: ``DIR/seg-NNNNNNNN.tps`` segment files, append-only, each a sequence
of records::

    b"TPS1" | length u32 | crc32(payload) u32 | payload (an Arrow IPC stream, zstd buffers: one table)

and ``DIR/cursor``: ``SEGMENT OFFSET`` of the first record not yet in
ClickHouse, replaced atomically (write, fsync, rename, fsync the directory).
Fully replayed segments are deleted.

Crash safety: a record is acknowledged only after its ``fsync``; a crash during
an append leaves a torn tail, which ``open`` detects (short read or checksum
mismatch on the last segment) and truncates: those spans were never
acknowledged, so their clients retry. A corrupt record in the middle (disk
damage) is moved aside to ``DIR/corrupt-*.tps`` and counted, never silently
dropped. A crash between an insert and the cursor update replays that record
again; the replay asks ClickHouse which of its spans are stored and drops those.

Full (``max_bytes``): new batches are refused with a retryable answer (429 /
UNAVAILABLE), so exporters keep them; nothing already in the spool is dropped.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import zlib

import pyarrow as pa

log = logging.getLogger(__name__)

MAGIC = b"TPS1"
# zstd-compressed Arrow buffers: spans are repetitive text, and the spool is disk-bound.
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")
HEADER = struct.Struct("<4sII")
_SEG_RE = re.compile(r"^seg-(\d{8})\.tps$")


class SpoolFull(Exception):
    pass


class SpoolInUse(Exception):
    pass


class Spool:
    def __init__(self, directory: str, max_bytes: int, segment_bytes: int = 64 * 1024 * 1024):
        self.dir = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.corrupt_records = 0
        self._lock = threading.Lock()
        os.makedirs(directory, exist_ok=True)
        # One process per spool: a second appender would interleave records.
        import fcntl

        self._dir_lock = open(os.path.join(directory, "lock"), "w")
        try:
            fcntl.flock(self._dir_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._dir_lock.close()
            raise SpoolInUse(f"spool directory {directory} is in use by another tokenpulse process; "
                             "give each process its own spool_dir") from None
        self._segments = sorted(int(m.group(1)) for f in os.listdir(directory) if (m := _SEG_RE.match(f)))
        self._cursor = self._read_cursor()
        if self._segments:
            self._repair_tail(self._segments[-1])
        self._drop_consumed()
        self._write_fh = None
        self.records = self._count_records()

    # ------------------------------------------------------------ files
    def _path(self, seg: int) -> str:
        return os.path.join(self.dir, f"seg-{seg:08d}.tps")

    def _read_cursor(self) -> tuple[int, int]:
        first = (self._segments[0], 0) if self._segments else (0, 0)
        try:
            with open(os.path.join(self.dir, "cursor"), encoding="ascii") as fh:
                seg, off = (int(x) for x in fh.read().split())
        except (OSError, ValueError):
            return first
        return (seg, off) if seg in self._segments else first

    def _write_cursor(self, seg: int, off: int) -> None:
        tmp = os.path.join(self.dir, "cursor.tmp")
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(f"{seg} {off}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, os.path.join(self.dir, "cursor"))
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _scan(self, seg: int, start: int = 0):
        """Yield (offset, next_offset, payload or None if corrupt) of the records in ``seg``; stops
        at a torn tail (yielding (offset, None, None))."""
        with open(self._path(seg), "rb") as fh:
            fh.seek(start)
            off = start
            while True:
                head = fh.read(HEADER.size)
                if not head:
                    return
                if len(head) < HEADER.size:
                    yield off, None, None
                    return
                magic, length, crc = HEADER.unpack(head)
                payload = fh.read(length) if magic == MAGIC else b""
                if magic != MAGIC or len(payload) < length:
                    yield off, None, None
                    return
                nxt = off + HEADER.size + length
                yield off, nxt, payload if zlib.crc32(payload) == crc else None
                off = nxt

    def _repair_tail(self, seg: int) -> None:
        for off, nxt, _ in self._scan(seg):
            if nxt is None:
                log.warning("spool %s: truncating a torn record at offset %d (never acknowledged)",
                            self._path(seg), off)
                with open(self._path(seg), "r+b") as fh:
                    fh.truncate(off)
                    fh.flush()
                    os.fsync(fh.fileno())
                return

    def _drop_consumed(self) -> None:
        seg, _ = self._cursor
        for s in [s for s in self._segments if s < seg]:
            os.remove(self._path(s))
            self._segments.remove(s)

    def _count_records(self) -> int:
        n = 0
        seg0, off0 = self._cursor
        for seg in self._segments:
            for _, nxt, _ in self._scan(seg, off0 if seg == seg0 else 0):
                n += nxt is not None
        return n

    # ------------------------------------------------------------ API
    @property
    def bytes(self) -> int:
        total = 0
        for seg in self._segments:
            try:
                total += os.path.getsize(self._path(seg))
            except OSError:
                pass
        return total - (self._cursor[1] if self._segments and self._cursor[0] == self._segments[0] else 0)

    def empty(self) -> bool:
        return self.records == 0

    def append(self, table: pa.Table) -> None:
        """Write one table durably (fsync) or raise SpoolFull / OSError."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as w:
            w.write_table(table)
        payload = sink.getvalue().to_pybytes()
        record = HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self.bytes + len(record) > self.max_bytes:
                raise SpoolFull(f"spool full ({self.bytes} of {self.max_bytes} bytes)")
            self._ensure_writer()
            self._write_fh.write(record)
            self._write_fh.flush()
            os.fsync(self._write_fh.fileno())
            self.records += 1

    def _ensure_writer(self) -> None:
        if self._write_fh is not None and self._write_fh.tell() < self.segment_bytes:
            return
        last = self._segments[-1] if self._segments else 0
        if self._write_fh is None and last and os.path.getsize(self._path(last)) < self.segment_bytes:
            seg = last  # after a restart, keep appending to the last segment
        else:
            seg = last + 1
        if self._write_fh is not None:
            self._write_fh.close()
        self._write_fh = open(self._path(seg), "ab")
        if seg not in self._segments:
            self._segments.append(seg)
            self._fsync_dir()
            if len(self._segments) == 1:
                self._cursor = (seg, 0)
                self._write_cursor(seg, 0)

    def peek(self) -> tuple[tuple[int, int], pa.Table] | None:
        """The oldest record not yet committed, as ((segment, next offset), table); None if empty."""
        with self._lock:
            while self._segments:
                seg, off = self._cursor
                for start, nxt, payload in self._scan(seg, off):
                    if nxt is None:
                        break  # a torn tail (repaired at open) or a record being written: none yet
                    if payload is None:  # damaged in place: set aside, count, go on
                        self._quarantine(seg, start, nxt)
                        self._cursor = (seg, nxt)
                        self._write_cursor(seg, nxt)
                        self.records -= 1
                        continue
                    return (seg, nxt), pa.ipc.open_stream(payload).read_all()
                if seg == self._segments[-1]:
                    return None
                # this segment is used up and a later one exists: delete it, move on
                self._cursor = (self._segments[1], 0)
                self._write_cursor(*self._cursor)
                self._drop_consumed()
            return None

    def commit(self, position: tuple[int, int]) -> None:
        """Mark the record ``peek`` returned (ending at ``position``) as stored in ClickHouse."""
        with self._lock:
            self._cursor = position
            self._write_cursor(*position)
            self.records -= 1

    def _quarantine(self, seg: int, start: int, end: int) -> None:
        self.corrupt_records += 1
        with open(self._path(seg), "rb") as fh:
            fh.seek(start)
            data = fh.read(end - start)
        path = os.path.join(self.dir, f"corrupt-{seg:08d}-{start}.tps")
        with open(path, "wb") as out:
            out.write(data)
        log.error("spool record failed its checksum; moved to %s", path)

    def close(self) -> None:
        with self._lock:
            if self._write_fh is not None:
                self._write_fh.close()
                self._write_fh = None
            if not self._dir_lock.closed:
                self._dir_lock.close()  # releases the flock
