"""Follows the compacted policy topic and hot-swaps the engine to the version it says to serve.

A thread reads the topic from the beginning (``proto.kafka.TopicReplay``: no consumer group, so every
replica reads all of it; retried with backoff while the broker is unreachable), folds the records into a
:class:`proto.policy_log.PolicyLog`, and whenever the target version differs from the one
being served, verifies the checkpoint's sha256 and swaps it into the running engine on the event loop.
A checkpoint that cannot be resolved, fails its hash or fails to load is skipped (counted, logged): this
replica then serves the best version it can load.
"""

import asyncio
import logging
import threading
from pathlib import Path

from proto import topics
from proto.kafka import RETRIED, TopicReplay, call_with_retry
from proto.policy_log import PolicyLog
from proto.policy_store import local_dir, weights_sha256
from proto.settings import KafkaSettings
from serving.engine import PolicyEngine

log = logging.getLogger(__name__)

# Short, so a replica follows the topic within seconds of the broker's return (the shared policy: 30 s).
MAX_RETRY_WAIT_S = 5.0


class PolicyFollower:
    """Keeps ``engine`` on the policy topic's target version.

    Args:
        kafka: broker and topic names.
        engine: the running engine to swap.
        base_model: directory of version 0 (the initial policy).
        loop: the event loop the engine runs on.
    """

    def __init__(self, kafka: KafkaSettings, engine: PolicyEngine, base_model: Path, loop: asyncio.AbstractEventLoop):
        self._kafka = kafka
        self._engine = engine
        self._base_model = base_model
        self._loop = loop
        self.policy = PolicyLog()
        self.synced = threading.Event()  # set once the topic was read to its end at least once
        self._failed: set[int] = set()  # versions that failed to resolve, verify or load; not retried
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy-follower", daemon=True)

    def start(self) -> None:
        """Start following."""
        self._thread.start()

    def stop(self) -> None:
        """Stop following (returns within about a second)."""
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        reader = None
        try:
            # Retried also while the topic does not exist yet: serving may start before it is created.
            reader = call_with_retry(
                TopicReplay, self._kafka, topics.POLICY, "rlhf-serving-policy", self._stop, MAX_RETRY_WAIT_S,
                what="opening the policy topic", stop=self._stop, max_wait_s=MAX_RETRY_WAIT_S, log=log,
            )
            while not self._stop.is_set():
                for key, record in reader.poll(timeout_ms=500):
                    self.policy.apply(key, record)
                if not self.synced.is_set() and reader.caught_up():
                    self.synced.set()
                if self.synced.is_set():
                    self._converge()
        except RETRIED:
            if not self._stop.is_set():
                raise
            # stopped while the broker was unreachable
        finally:
            if reader is not None:
                reader.close()

    def _converge(self) -> None:
        target = self.policy.target(skip=self._failed)
        if target == self._engine.version:
            return
        if target == 0:
            path, expected = self._base_model, None
        else:
            record = self.policy.versions[target]
            try:
                path, expected = local_dir(record.checkpoint_uri), record.weights_sha256
            except ValueError as exc:
                self._fail(target, str(exc))
                return
        if expected is not None and weights_sha256(path) != expected:
            self._fail(target, f"weights at {path} do not match sha256 {expected}")
            return
        future = asyncio.run_coroutine_threadsafe(self._engine.swap(target, path), self._loop)
        try:
            pause = future.result()
        except Exception as exc:  # the engine restored the previous weights; see PolicyEngine.swap
            self._fail(target, f"load failed: {exc!r}")
            return
        log.info("now serving policy v%d from %s (generation paused %.3fs)", target, path, pause)

    def _fail(self, version: int, reason: str) -> None:
        log.error("not serving policy v%d: %s", version, reason)
        self._engine.metrics.swap_failures.inc()
        self._failed.add(version)
