"""Follows the compacted policy topic and hot-swaps the engines to the versions it says to serve.

A thread reads the topic from the beginning (``proto.kafka.TopicReplay``: no consumer group, so every
replica reads all of it; retried with backoff while the broker is unreachable), folds the records into a
:class:`proto.policy_log.PolicyLog`, and whenever the target version differs from the one
being served, verifies the checkpoint's sha256 and swaps it into the running engine on the event loop.
A checkpoint that cannot be resolved, fails its hash or fails to load is skipped (counted, logged): this
replica then serves the best version it can load.

The live canary (serving/canary.py) follows ``PolicyLog.canary()`` the same way: when it closes (or a pin
stops it) its users go back to the main engine at once, before the main engine swaps (to the candidate,
when it was promoted); when one opens, the candidate's checkpoint is verified and loaded into the canary
engine (started on the first canary, ≈ 20-30 s, while both the event loop and this thread go on), and its
users are routed to it once loaded. A candidate that fails its hash or load is not served as a canary on
this replica.
"""

import asyncio
import logging
import os
import signal
import threading
from concurrent.futures import Future
from pathlib import Path

from proto import topics
from proto.kafka import RETRIED, TopicReplay, call_with_retry
from proto.policy_log import PolicyLog
from proto.policy_store import local_dir, weights_sha256
from proto.settings import KafkaSettings
from serving.canary import CanaryRouter

log = logging.getLogger(__name__)

# Short, so a replica follows the topic within seconds of the broker's return (the shared policy: 30 s).
MAX_RETRY_WAIT_S = 5.0


class PolicyFollower:
    """Keeps the main engine on the policy topic's target version and the canary engine on its canary.

    Args:
        kafka: broker and topic names.
        router: the main engine (swapped in place) and the live canary's router.
        base_model: directory of version 0 (the initial policy).
        loop: the event loop the engines run on.
    """

    def __init__(self, kafka: KafkaSettings, router: CanaryRouter, base_model: Path,
                 loop: asyncio.AbstractEventLoop):
        self._kafka = kafka
        self._router = router
        self._engine = router.main
        self._base_model = base_model
        self._loop = loop
        self.policy = PolicyLog()
        self.synced = threading.Event()  # set once the topic was read to its end at least once
        self._failed: set[int] = set()  # versions that failed to resolve, verify or load; not retried
        self._failed_canary: set[int] = set()  # candidates not served as a canary here; not retried
        self._loading: tuple[int, Future] | None = None  # the candidate being loaded into the canary engine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy-follower", daemon=True)

    def start(self) -> None:
        """Start following."""
        self._thread.start()

    def stop(self) -> None:
        """Stop following (returns within about a second)."""
        self._stop.set()
        self._thread.join(5)

    @property
    def alive(self) -> bool:
        """False once the following thread has ended (it ends only when stopped, or on a bug)."""
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._follow()
        except BaseException:
            # A replica that no longer follows the topic would serve a rolled-back version forever: stop the
            # process (gracefully: requests in flight finish), so that its supervisor starts it afresh.
            log.critical("the policy follower failed: stopping serving", exc_info=True)
            os.kill(os.getpid(), signal.SIGTERM)
            raise

    def _follow(self) -> None:
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

    def _on_loop(self, coro):
        """Run ``coro`` on the engines' event loop; return its result or raise its exception."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _converge(self) -> None:
        canary = self.policy.canary()
        if self._router.version is not None and (canary is None or canary.version != self._router.version):
            self._on_loop(_call(self._router.close))  # its users back on the main engine before anything else
        self._converge_main()
        self._reap_load()
        if canary is not None and self._loading is None:
            self._converge_canary(canary.version, canary.canary.share)

    def _converge_main(self) -> None:
        target = self.policy.target(skip=self._failed)
        if target == self._engine.version:
            return
        path = self._verified(target, self._failed)
        if path is None:
            return
        try:
            pause = self._on_loop(self._engine.swap(target, path))
        except Exception as exc:  # the engine restored the previous weights; see PolicyEngine.swap
            self._fail(target, f"load failed: {exc!r}", self._failed)
            return
        log.info("now serving policy v%d from %s (generation paused %.3fs)", target, path, pause)

    def _reap_load(self) -> None:
        """Forget the canary engine's load once it is done; record it as failed if it failed."""
        if self._loading is None or not self._loading[1].done():
            return
        version, future = self._loading
        self._loading = None
        try:
            future.result()
        except Exception as exc:  # not served; a failed swap left the canary engine on its previous weights
            self._fail(version, f"the canary engine could not load it: {exc!r}", self._failed_canary)

    def _converge_canary(self, version: int, share: float) -> None:
        """Serve candidate ``version`` to ``share`` of users once the canary engine has it loaded. The load
        (with the engine's first start, ≈ 20-30 s) runs on the event loop while this thread goes on
        following the topic, so the main engine's swaps and a canary's end are not held up by it."""
        if version in self._failed | self._failed_canary or (self._router.version, self._router.share) == (
                version, share):
            return
        if self._router.loaded == version:
            self._on_loop(_call(self._router.open, version, share))
            return
        path = self._verified(version, self._failed_canary)
        if path is not None:
            self._loading = (version, asyncio.run_coroutine_threadsafe(self._router.load(version, path),
                                                                       self._loop))

    def _verified(self, version: int, failed: set[int]) -> Path | None:
        """The directory of ``version``'s weights once their sha256 matches its record (version 0: the base
        model); None after recording the failure in ``failed``."""
        if version == 0:
            return self._base_model
        record = self.policy.versions[version]
        try:
            path = local_dir(record.checkpoint_uri)
        except ValueError as exc:
            self._fail(version, str(exc), failed)
            return None
        try:
            digest = weights_sha256(path)
        except OSError as exc:  # a missing or unreadable file (half-synced, deleted): that version only
            self._fail(version, f"weights at {path} cannot be read: {exc!r}", failed)
            return None
        if digest != record.weights_sha256:
            self._fail(version, f"weights at {path} do not match sha256 {record.weights_sha256}", failed)
            return None
        return path

    def _fail(self, version: int, reason: str, failed: set[int]) -> None:
        which = "as the live canary " if failed is self._failed_canary else ""
        log.error("not serving policy v%d %son this replica: %s", version, which, reason)
        self._engine.metrics.swap_failures.inc()
        failed.add(version)


async def _call(fn, *args):
    """``fn(*args)`` as a coroutine, so that :meth:`PolicyFollower._on_loop` runs it on the event loop."""
    return fn(*args)
