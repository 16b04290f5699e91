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

Crash safety: a record is acknowledged only after its ``fsync``. An append that fails anywhere
(ENOSPC midway, a short write, EIO from ``fsync``) is cut back to the offset where it started,
the file is fsynced again and the batch is refused (retryable; it was never acknowledged), so a
half record is never followed by later ones. If even the cut-back fails, the spool refuses every
append from then on (``broken``) and says why; what it holds is replayed as usual. A crash during
an append leaves a torn tail, which ``open`` detects (short read or checksum mismatch on the last
segment) and truncates: those spans were never acknowledged, so their clients retry. A corrupt
record in the middle (disk damage) is moved aside to ``DIR/corrupt-*.tps`` and counted, never
silently dropped; so is the unreadable rest of a segment that is not the last. A crash between an
insert and the cursor update replays that record again; the replay asks ClickHouse which of its
spans are stored and drops those. A cursor that cannot be written (disk full) is kept in memory
and written at the next commit.

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
# The appends' system calls, by name so the fault tests can make them fail (EIO, short writes).
_write = os.write
_fsync = os.fsync
_SEG_RE = re.compile(r"^seg-(\d{8})\.tps$")


class SpoolFull(Exception):
    pass


class SpoolInUse(Exception):
    pass


class SpoolBroken(OSError):
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
        self._write_fd: int | None = None
        self._write_seg = 0
        self._write_size = 0
        self.broken = ""  # why appends are refused for good (a failed append that could not be undone)
        self.cursor_errors = 0  # cursor writes that failed (disk full); retried at the next commit
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
        """Write one table durably (fsync) or raise SpoolFull / OSError, leaving the files as they were."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as w:
            w.write_table(table)
        payload = sink.getvalue().to_pybytes()
        record = HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self.broken:
                raise SpoolBroken(f"the spool refuses appends: {self.broken}")
            if self.bytes + len(record) > self.max_bytes:
                raise SpoolFull(f"spool full ({self.bytes} of {self.max_bytes} bytes)")
            self._ensure_writer()
            fd = self._write_fd
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(record)
                while view:  # a write may take less than asked (a short write): go on from there
                    view = view[_write(fd, view):]
                _fsync(fd)
            except OSError:
                self._cut_back(fd, start)
                raise
            self._write_size = start + len(record)
            self.records += 1

    def _cut_back(self, fd: int, start: int) -> None:
        """Undo a failed append: truncate to where it started and make that durable."""
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError as e:
            self.broken = (f"a failed append could not be undone at {self._path(self._write_seg)} offset {start} "
                           f"({e.strerror or e}); restart tokenpulse once the disk is healthy")
            log.error("spool: %s", self.broken)

    def _ensure_writer(self) -> None:
        if self._write_fd is not None and self._write_size < self.segment_bytes:
            return
        last = self._segments[-1] if self._segments else 0
        if self._write_fd is None and last and os.path.getsize(self._path(last)) < self.segment_bytes:
            seg = last  # after a restart, keep appending to the last segment
        else:
            seg = last + 1
        fd = os.open(self._path(seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if self._write_fd is not None:
            os.close(self._write_fd)
        self._write_fd, self._write_seg, self._write_size = fd, seg, os.lseek(fd, 0, os.SEEK_END)
        if seg not in self._segments:
            self._segments.append(seg)
            self._fsync_dir()
            if len(self._segments) == 1:
                self._cursor = (seg, 0)
                self._save_cursor()

    def peek(self) -> tuple[tuple[int, int], pa.Table] | None:
        """The oldest record not yet committed, as ((segment, next offset), table); None if empty."""
        with self._lock:
            while self._segments:
                seg, off = self._cursor
                for start, nxt, payload in self._scan(seg, off):
                    if nxt is None:
                        if seg != self._segments[-1]:  # damage, not a tail being written: keep the rest aside
                            self._quarantine(seg, start, os.path.getsize(self._path(seg)))
                        break
                    if payload is None:  # damaged in place: set aside, count, go on
                        self._quarantine(seg, start, nxt)
                        self._cursor = (seg, nxt)
                        self._save_cursor()
                        self.records -= 1
                        continue
                    return (seg, nxt), pa.ipc.open_stream(payload).read_all()
                if seg == self._segments[-1]:
                    return None
                # this segment is used up and a later one exists: delete it, move on
                self._cursor = (self._segments[1], 0)
                self._save_cursor()
                self._drop_consumed()
            return None

    def commit(self, position: tuple[int, int]) -> None:
        """Mark the record ``peek`` returned (ending at ``position``) as stored in ClickHouse."""
        with self._lock:
            self._cursor = position
            self.records -= 1
            self._save_cursor()

    def _save_cursor(self) -> None:
        """Write the cursor file; if the disk refuses, keep going from memory and try again next time:
        a restart before then replays a few records, which the replay finds stored and drops."""
        try:
            self._write_cursor(*self._cursor)
        except OSError as e:
            self.cursor_errors += 1
            log.warning("spool: cannot write the cursor (%s); kept in memory, retried at the next commit",
                        e.strerror or e)

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
            if self._write_fd is not None:
                os.close(self._write_fd)
                self._write_fd = None
            if not self._dir_lock.closed:
                self._dir_lock.close()  # releases the flock
