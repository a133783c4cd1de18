"""A durable, ordered, on-disk queue of events awaiting delivery to Kafka (a write-ahead log).

Every event serving accepts is appended here (and fsync'ed) before the HTTP call returns, so an event is
never only in memory: a Kafka outage, a slow broker or a crash of serving loses nothing. A sender reads
records in order and acknowledges them once Kafka has acknowledged them; acknowledged records are dropped
when the reader catches up.

File layout in ``directory``:
  ``spool.log``  records, each ``[u32 length][u32 crc32][SpooledRecord bytes]`` (big-endian);
  ``cursor``     the byte offset of the first unacknowledged record (replaced atomically).
A torn last record (a crash mid-append) fails its length or CRC check and is cut off on open; it was never
acknowledged to a client. An append that fails (a full disk: ``OSError`` mid-write or from fsync) is rolled
back at once, the log cut to the end of the last good record, so no torn record ever sits before later
ones: a restart would otherwise cut the later, acknowledged records off with it. If even the rollback
fails, every append first retries it and fails (the request is refused) until it succeeds.

Delivery is at-least-once: a crash after Kafka acknowledges a batch but before the cursor moves re-sends
that batch, so consumers deduplicate by the event's id (the record key).
"""

import os
import struct
import threading
import zlib
from pathlib import Path

from proto.events_pb2 import SpooledRecord

_HEADER = struct.Struct(">II")


class Spool:
    """Thread-safe append-only record queue on local disk.

    Args:
        directory: where ``spool.log`` and ``cursor`` live (created if missing).
        fsync: fsync every append (durable across power loss); False only for benchmarks.
    """

    def __init__(self, directory: Path, fsync: bool = True):
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._log_path = self._dir / "spool.log"
        self._cursor_path = self._dir / "cursor"
        self._fsync = fsync
        self._lock = threading.Lock()
        self._log_path.touch(exist_ok=True)
        self._cursor = self._read_cursor()
        self._depth, self._end = self._scan(self._cursor)
        # Unbuffered: after a failed write no bytes wait in a buffer to land behind the rollback.
        self._fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND)
        os.ftruncate(self._fd, self._end)
        self._torn = False  # a failed append's bytes may be past self._end

    def _read_cursor(self) -> int:
        try:
            cursor = int(self._cursor_path.read_text())
        except (FileNotFoundError, ValueError):
            return 0
        # A cursor past the end means the log was emptied but the cursor reset did not happen before a crash.
        return cursor if cursor <= self._log_path.stat().st_size else 0

    def _scan(self, start: int) -> tuple[int, int]:
        """Count valid records from ``start``; return (count, byte offset just past the last valid one)."""
        count, pos = 0, start
        with open(self._log_path, "rb") as f:
            f.seek(start)
            while True:
                header = f.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    break
                length, crc = _HEADER.unpack(header)
                payload = f.read(length)
                if len(payload) < length or zlib.crc32(payload) != crc:
                    break
                count += 1
                pos += _HEADER.size + length
        return count, pos

    @property
    def depth(self) -> int:
        """Number of records appended but not yet acknowledged."""
        return self._depth

    def append(self, record: SpooledRecord) -> None:
        """Durably append ``record``. Raises ``OSError`` when the disk write fails: the record is not
        accepted and the log is rolled back to its last good record (see the module docstring)."""
        payload = record.SerializeToString()
        frame = memoryview(_HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
        with self._lock:
            if self._torn:
                os.ftruncate(self._fd, self._end)
                self._torn = False
            try:
                written = 0
                while written < len(frame):
                    written += os.write(self._fd, frame[written:])
                if self._fsync:
                    os.fsync(self._fd)
            except OSError:
                self._torn = True
                try:
                    os.ftruncate(self._fd, self._end)
                    self._torn = False
                except OSError:
                    pass  # retried before the next append
                raise
            self._end += len(frame)
            self._depth += 1

    def read(self, max_records: int) -> tuple[list[SpooledRecord], int]:
        """The oldest unacknowledged records (up to ``max_records``) and the offset to :meth:`ack` them."""
        records: list[SpooledRecord] = []
        with self._lock:
            pos = self._cursor
            with open(self._log_path, "rb") as f:
                f.seek(pos)
                while len(records) < max_records and pos < self._end:
                    header = f.read(_HEADER.size)
                    if len(header) < _HEADER.size:
                        break
                    length, _ = _HEADER.unpack(header)
                    record = SpooledRecord()
                    record.ParseFromString(f.read(length))
                    records.append(record)
                    pos += _HEADER.size + length
        return records, pos

    def ack(self, offset: int, count: int) -> None:
        """Mark the ``count`` records before byte ``offset`` delivered; empty the log when all are."""
        with self._lock:
            self._cursor = offset
            self._depth -= count
            if self._cursor == self._end:
                # Caught up: truncate first, then reset the cursor (see _read_cursor for the crash case).
                os.ftruncate(self._fd, 0)
                self._end = self._cursor = 0
            self._write_cursor()

    def _write_cursor(self) -> None:
        tmp = self._cursor_path.with_suffix(".tmp")
        tmp.write_text(str(self._cursor))
        os.replace(tmp, self._cursor_path)

    def close(self) -> None:
        """Close the log file."""
        with self._lock:
            os.close(self._fd)
