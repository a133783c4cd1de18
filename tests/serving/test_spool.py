"""The durable spool on its own: order, acknowledgement, restart, torn tail."""

from proto.events_pb2 import SpooledRecord
from serving.spool import Spool


def rec(i: int) -> SpooledRecord:
    return SpooledRecord(topic="t", key=f"k{i}".encode(), value=f"v{i}".encode())


def test_order_ack_and_restart(tmp_path):
    spool = Spool(tmp_path)
    for i in range(5):
        spool.append(rec(i))
    records, end = spool.read(2)
    assert [r.key for r in records] == [b"k0", b"k1"]
    spool.ack(end, 2)
    assert spool.depth == 3
    spool.close()

    reopened = Spool(tmp_path)
    assert reopened.depth == 3
    records, end = reopened.read(10)
    assert [r.key for r in records] == [b"k2", b"k3", b"k4"]
    reopened.ack(end, 3)
    assert reopened.depth == 0 and (tmp_path / "spool.log").stat().st_size == 0
    reopened.append(rec(9))
    assert [r.key for r in reopened.read(10)[0]] == [b"k9"]


def test_torn_tail_is_cut(tmp_path):
    spool = Spool(tmp_path)
    spool.append(rec(0))
    spool.append(rec(1))
    spool.close()
    log = tmp_path / "spool.log"
    log.write_bytes(log.read_bytes()[:-3])  # crash mid-append of the second record
    reopened = Spool(tmp_path)
    assert reopened.depth == 1
    assert [r.key for r in reopened.read(10)[0]] == [b"k0"]


def test_failed_append_is_rolled_back(tmp_path, monkeypatch):
    """A disk that fills up mid-write: the half-written record is cut at once, so later appends and a
    restart keep every acknowledged record (a torn frame in the middle would cut them off on open)."""
    import errno
    import os

    import pytest

    from serving import spool as spool_module

    spool = Spool(tmp_path)
    spool.append(rec(0))
    real_write, real_fsync = os.write, os.fsync
    failures = {"write": 1, "fsync": 1, "truncate": 1}

    def half_write(fd, data):  # writes half the frame to the real file, then the disk is full
        if failures["write"]:
            failures["write"] -= 1
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    def failing_fsync(fd):
        if failures["fsync"]:
            failures["fsync"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(spool_module.os, "write", half_write)
    with pytest.raises(OSError):
        spool.append(rec(1))
    assert (tmp_path / "spool.log").stat().st_size == len(spool_module._HEADER.pack(0, 0)) + len(
        rec(0).SerializeToString())
    spool.append(rec(2))

    # fsync fails after a whole write, and the rollback itself fails once: the next append rolls back first.
    monkeypatch.setattr(spool_module.os, "fsync", failing_fsync)
    real_truncate = os.ftruncate

    def failing_truncate(fd, length):
        if failures["truncate"]:
            failures["truncate"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        return real_truncate(fd, length)

    monkeypatch.setattr(spool_module.os, "ftruncate", failing_truncate)
    with pytest.raises(OSError):
        spool.append(rec(3))
    spool.append(rec(4))
    assert spool.depth == 3
    assert [r.key for r in spool.read(10)[0]] == [b"k0", b"k2", b"k4"]
    spool.close()

    reopened = Spool(tmp_path)
    assert reopened.depth == 3
    assert [r.key for r in reopened.read(10)[0]] == [b"k0", b"k2", b"k4"]
