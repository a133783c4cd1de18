"""Serving's event log: every accepted event goes to the durable spool, a sender thread moves it to Kafka.

``publish`` returns once the event is on local disk, so requests never wait on Kafka and an unreachable or
slow broker never loses an event. The sender delivers spooled events in order through an idempotent
producer (acks=all, ``proto.kafka``) and acknowledges them in the spool only after Kafka did; on failure it
retries the same records under the shared retry policy (backoff up to ``MAX_BACKOFF_S``), so events reach
Kafka in the order serving accepted them.
"""

import logging
import threading
import time
from pathlib import Path

from google.protobuf.message import Message
from kafka import KafkaProducer

from proto import wire
from proto.events_pb2 import SpooledRecord
from proto.kafka import RETRIED, idempotent_producer, kafka_retrying
from proto.settings import KafkaSettings
from serving.metrics import ServingMetrics
from serving.spool import Spool

log = logging.getLogger(__name__)

BATCH_RECORDS = 256
# Short, so readiness returns within seconds of the broker (the shared policy waits up to 30 s).
MAX_BACKOFF_S = 5.0
# Kafka counts as unreachable once spooled events have waited this long without any delivery (s).
STALL_S = 5.0


class EventLog:
    """Durable producer of the loop's events.

    Args:
        kafka: broker address and topic names.
        spool_dir: directory of the on-disk spool.
        metrics: where the spool depth, deliveries and produce errors are recorded.
    """

    def __init__(self, kafka: KafkaSettings, spool_dir: Path, metrics: ServingMetrics):
        self._kafka = kafka
        self._metrics = metrics
        self._spool = Spool(spool_dir)
        self._producer: KafkaProducer | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._delivering = threading.Event()  # set while the last delivery attempt succeeded
        self._thread = threading.Thread(target=self._run, name="event-log-sender", daemon=True)
        # monotonic time since which the oldest undelivered event has waited without progress, or None
        self._pending_since: float | None = time.monotonic() if self._spool.depth else None
        self._metrics.spool_depth.set(self._spool.depth)

    def start(self) -> None:
        """Start the sender thread (it first replays whatever an earlier run left in the spool)."""
        self._thread.start()
        self._wake.set()

    @property
    def connected(self) -> bool:
        """True when the last delivery attempt succeeded and spooled events are not stalled.

        A delivery to an unreachable broker only fails after the producer's timeouts, so stalled events
        (no progress for ``STALL_S`` seconds) also mean Kafka is unreachable.
        """
        pending_since = self._pending_since
        stalled = pending_since is not None and time.monotonic() - pending_since > STALL_S
        return self._delivering.is_set() and not stalled

    @property
    def depth(self) -> int:
        """Events accepted but not yet acknowledged by Kafka."""
        return self._spool.depth

    def publish(self, topic_name: str, event: Message) -> None:
        """Accept ``event`` for ``topic_name`` (e.g. ``"feedback"``): durable on return.

        Raises ``OSError`` when the spool cannot be written; the caller must then refuse the request.
        """
        record = SpooledRecord(topic=self._kafka.topic(topic_name), key=wire.key_of(event), value=wire.encode(event))
        self._spool.append(record)
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self._metrics.spool_depth.set(self._spool.depth)
        self._wake.set()

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what can be delivered within ``timeout_s`` seconds, then stop; the rest stays spooled."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._producer is not None:
            self._producer.close(timeout=1)
        self._spool.close()

    def _connect(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = idempotent_producer(
                self._kafka,
                "rlhf-serving",
                linger_ms=5,
                max_block_ms=5000,
                request_timeout_ms=5000,
                delivery_timeout_ms=15000,
            )
        return self._producer

    def _deliver_batch(self) -> int:
        """Send the oldest spooled records and wait for Kafka's acks; return how many were delivered.

        Connects first even with nothing spooled, so that an idle log still knows whether Kafka answers.
        """
        producer = self._connect()
        records, end = self._spool.read(BATCH_RECORDS)
        if not records:
            return 0
        futures = [producer.send(r.topic, key=r.key, value=r.value) for r in records]
        producer.flush(timeout=20)
        for future, record in zip(futures, records):
            future.get(timeout=0)  # raises the delivery error, if any
        self._spool.ack(end, len(records))
        self._pending_since = time.monotonic() if self._spool.depth else None
        for record in records:
            self._metrics.events_delivered.labels(topic=record.topic).inc()
        self._metrics.spool_depth.set(self._spool.depth)
        return len(records)

    def _failed(self, exc: BaseException) -> None:
        self._delivering.clear()
        self._metrics.produce_errors.inc()

    def _run(self) -> None:
        retrying = kafka_retrying(
            "kafka delivery", self._stop, max_wait_s=MAX_BACKOFF_S, on_error=self._failed, log=log
        )
        while True:
            self._wake.clear()
            try:
                delivered = retrying(self._deliver_batch)
            except RETRIED:
                return  # stopped while Kafka was unreachable: the rest stays spooled
            self._delivering.set()
            if delivered:
                continue
            if self._stop.is_set():
                return
            self._wake.wait(timeout=1.0)
