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
