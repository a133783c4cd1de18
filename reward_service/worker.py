"""The online loop: consume interactions and votes, train, checkpoint.

One thread runs, in order, forever:
1. poll a batch of records from the interactions and feedback topics;
2. store each in the join store (malformed ones are logged, counted and skipped);
3. when at least ``train_min_votes`` votes wait, or the oldest has waited ``train_max_wait_s``, train one
   step on the waiting votes (oldest first, up to ``train_batch_size``) and the pairs they complete; while
   more wait, the next turn's poll does not wait for records, so steps follow each other at once;
4. when enough votes were trained, or enough time passed, checkpoint: evaluate on the held-out set, save
   weights + optimizer + offsets as a new version, *then* commit the offsets.

Rewards are given in one place only, ``POST /v1/score``, by the newest saved version when asked (the
learner asks at training time): nothing is scored on arrival.

Because offsets are committed only after the checkpoint that contains their effects, and a restart
resumes from the checkpoint's own offsets (rolling the join store's training marks back to it), a crash
at any point loses no vote and trains none twice.

A broker outage pauses the loop, it never ends it: every Kafka call goes through the shared retry policy
(``proto.kafka``, backoff up to 30 s, each retry logged); an offset commit is retried for
``COMMIT_GIVE_UP_S`` and then skipped (the checkpoint holds the offsets; the next commit catches up). Any
other error ends the thread: it is logged, kept in ``error`` (``/healthz`` answers 503) and handed to
``on_failure``, which the command line uses to end the process with status 1, so that a supervisor
restarts it rather than leave a live process that no longer trains.
"""

import logging
import threading
import time
from collections.abc import Callable

from proto import topics, wire
from proto.device import resolve_device
from proto.kafka import RETRIED, AssignedConsumer, call_with_retry
from proto.settings import KafkaSettings
from proto.topics import ensure_topics
from reward_service.checkpoint import OVERLAY, CheckpointStore, new_state
from reward_service.identity import Distribution
from reward_service.metrics import RewardMetrics, cpu_clock
from reward_service.model import load_reward_model
from reward_service.scorer import Scorer
from reward_service.settings import Settings
from reward_service.store import Backlog, InvalidEvent, JoinStore
from reward_service.trainer import Trainer

log = logging.getLogger(__name__)

CONSUMED = (topics.INTERACTIONS, topics.FEEDBACK)
COMMIT_GIVE_UP_S = 60.0


class StreamWorker(threading.Thread):
    """The consumer/trainer thread. ``ready`` is set once it reads Kafka; ``error`` holds what killed it,
    which is also passed to ``on_failure`` (if given) from the dying thread."""

    def __init__(
        self,
        settings: Settings,
        kafka: KafkaSettings,
        scorer: Scorer,
        checkpoints: CheckpointStore,
        metrics: RewardMetrics,
        on_failure: Callable[[BaseException], None] | None = None,
    ):
        super().__init__(name="reward-stream", daemon=True)
        self.settings = settings
        self.kafka = kafka
        self.scorer = scorer
        self.checkpoints = checkpoints
        self.metrics = metrics
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.on_failure = on_failure
        self.consumer: AssignedConsumer | None = None
        self._stopping = threading.Event()
        self._evaluate_cpu = 0.0
        self._backlog = Backlog(0, None)
        # Read at scrape time, so the lag grows in real time while a long step or evaluation runs.
        metrics.vote_lag.set_function(lambda: self._backlog.lag(time.time()))

    def stop(self, timeout_s: float = 120.0) -> None:
        """Ask the loop to finish its step, save a last checkpoint and close; wait for it."""
        self._stopping.set()
        self.join(timeout_s)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # the thread would die silently otherwise; /healthz reports it
            if self._stopping.is_set() and isinstance(exc, RETRIED):
                log.warning("stopped while Kafka was unreachable (%r)", exc)
                return
            self.error = exc
            log.exception("reward stream worker failed")
            if self.on_failure is not None:
                self.on_failure(exc)

    # -- setup -----------------------------------------------------------------------------------------

    def _load(self) -> None:
        """Resume from the newest checkpoint: model, optimiser, lineage counters, join-store marks."""
        s = self.settings
        self.version = self.checkpoints.latest()
        self.state = self.checkpoints.state(self.version)
        self.store = JoinStore(
            s.store_path, s.heldout_fraction, s.identity_share_factor, s.identity_window_votes
        )
        if s.trainable_layers != self.state.trainable_layers:
            log.warning(
                "trainable_layers=%d is ignored: the checkpoints in %s train %d layers "
                "(a new state dir starts a lineage with the new setting)",
                s.trainable_layers,
                self.checkpoints.root,
                self.state.trainable_layers,
            )
        rolled_back = self.store.rollback(self.version)
        if rolled_back:
            log.info("%d votes trained after checkpoint %d will be trained again", rolled_back, self.version)
        model = load_reward_model(
            s.base_model,
            self.state.trainable_layers,
            self.checkpoints.path(self.version) / OVERLAY,
            resolve_device(s.device),
        )
        self.trainer = Trainer(
            model,
            self.scorer.encoder,
            s.learning_rate,
            s.head_learning_rate,
            s.pairwise_weight,
            up_trained=self.state.up_trained,
            down_trained=self.state.down_trained,
            micro_batch_tokens=s.train_micro_batch_tokens,
            trunk_cache_bytes=s.trunk_cache_mb << 20,
            dtype=s.dtype,
        )
        optimizer_state = self.checkpoints.load_optimizer_state(self.version)
        if optimizer_state is not None:
            self.trainer.load_optimizer_state(optimizer_state)
        self.unsaved_votes = 0
        self.unsaved_pairs = 0
        self.saved_at = time.monotonic()
        self._publish_state_metrics()
        self._update_backlog()

    def _connect(self) -> None:
        """Create topics if missing, then assign every partition of both topics and seek to the checkpoint.

        The trainer is one model, so one consumer reads all partitions (``AssignedConsumer``, not a group
        subscription that would split them); the group id still records committed offsets and lag.
        """
        call_with_retry(ensure_topics, self.kafka, what="creating topics", stop=self._stopping, log=log)
        self.consumer = AssignedConsumer(
            self.kafka, CONSUMED, "rlhf-reward", self.settings.group_id, self.state.offsets,
            stop=self._stopping,
        )
        self.short_names = {self.kafka.topic(name): name for name in CONSUMED}
        log.info(
            "consuming %s from %s",
            [f"{tp.topic}/{tp.partition}" for tp in self.consumer.partitions],
            self.state.offsets,
        )
        self.ready.set()

    # -- the loop --------------------------------------------------------------------------------------

    def _run(self) -> None:
        self._load()
        try:
            self._connect()
            while not self._stopping.is_set():
                try:
                    self._step()
                except RETRIED:
                    if not self._stopping.is_set():
                        raise
                    # stopped while a Kafka call was being retried: save what was trained
            self._checkpoint()
        finally:
            self.ready.clear()
            if self.consumer is not None:
                self.consumer.close()
            self.store.close()

    def _step(self) -> None:
        """One turn of the loop (steps 1–4 of the module docstring)."""
        s = self.settings
        # The poll's wait for records is idle time, not CPU: counting it under ingest costs nothing. No wait
        # while votes are ready to train (a backlog in the store, e.g. after a restart).
        wait_ms = 0 if self._backlog.votes >= s.train_min_votes else s.poll_timeout_ms
        with self.metrics.cpu_stage("ingest"):
            polled = self.consumer.poll(wait_ms, s.poll_max_records)
            for tp, records in polled.items():
                name = self.short_names[tp.topic]
                self.metrics.events.labels(name).inc(len(records))
                for record in records:
                    self._store(name, record)
            self.store.commit()
            # Time out unjoined votes only when caught up on both topics: while a backlog is being read,
            # their interactions may still be in it (after a long outage every vote would look late).
            expired, evicted = self.store.drop_unjoined(
                None if polled else s.join_timeout_s, s.max_pending_votes
            )
            self.metrics.unknown_response_ids.labels("expired").inc(expired)
            self.metrics.unknown_response_ids.labels("evicted").inc(evicted)
            self.metrics.pending_joins.set(self.store.pending())
            self._publish_identities()
            backlog = self._update_backlog()
        if backlog.votes >= s.train_min_votes or backlog.lag(time.time()) >= s.train_max_wait_s:
            with self.metrics.cpu_stage("train"):
                self._train()
            self._update_backlog()
        waited = time.monotonic() - self.saved_at
        if self.unsaved_votes >= s.checkpoint_every_examples or waited >= s.checkpoint_interval_s:
            self._checkpoint()

    def _update_backlog(self) -> Backlog:
        """Re-read the votes waiting to be trained (the lag and untrained-votes gauges)."""
        self._backlog = self.store.backlog()
        self.metrics.votes_untrained.set(self._backlog.votes)
        return self._backlog

    def _store(self, name: str, record):
        """Decode and store one record; returns the event, or None when it was malformed (and skipped)."""
        try:
            event = wire.decode(name, record.value)
            if name == topics.INTERACTIONS:
                if not self._fits(event):
                    return None
                self.store.add_interaction(event)
            else:
                self.store.add_vote(event)
            return event
        except (wire.MalformedEvent, InvalidEvent) as exc:
            reason = "decode" if isinstance(exc, wire.MalformedEvent) else "invalid"
            self.metrics.malformed.labels(name, reason).inc()
            log.warning(
                "skipping malformed record %s/%d@%d: %s", record.topic, record.partition, record.offset, exc
            )
            return None

    def _fits(self, event) -> bool:
        """Whether the interaction fits the context; one that does not is counted and not trained (its
        votes then count as unknown response ids once they time out)."""
        messages = [{"role": m.role, "content": m.content} for m in event.prompt_messages]
        tokens = len(self.scorer.encoder.encode(messages, event.response_text, event.finish_reason))
        if tokens <= self.settings.max_context_tokens:
            return True
        self.metrics.too_long.inc()
        log.warning(
            "interaction %s has %d tokens (> %d): skipped",
            event.response_id,
            tokens,
            self.settings.max_context_tokens,
        )
        return False

    def _train(self) -> None:
        """One optimiser step on the waiting votes (oldest first, up to ``train_batch_size``), marked as
        part of the next version."""
        votes = self.store.trainable(self.settings.train_batch_size)
        if not votes:
            return
        pairs = [p for p in map(self.store.partner, votes) if p is not None]
        result = self.trainer.step(votes, pairs)
        self.store.mark_trained([v.feedback_id for v in votes], self.version + 1)
        self.store.commit()
        self.unsaved_votes += result.votes
        self.unsaved_pairs += result.pairs
        self.metrics.loss.labels("pointwise").set(result.pointwise_loss)
        if result.pairwise_loss is not None:
            self.metrics.loss.labels("pairwise").set(result.pairwise_loss)
        self.metrics.examples_seen.labels("pointwise").set(self.state.votes_trained + self.unsaved_votes)
        self.metrics.examples_seen.labels("pairwise").set(self.state.pairs_trained + self.unsaved_pairs)

    # -- checkpoints -----------------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        """:meth:`_save`, with its CPU time counted: the held-out evaluation as stage ``evaluate``, the rest
        (offsets, save, prune, reload of the scorer, commit) as ``checkpoint``."""
        clock = cpu_clock()
        started = clock()
        self._evaluate_cpu = 0.0
        try:
            self._save()
        finally:
            spent = clock() - started - self._evaluate_cpu
            self.metrics.stage_cpu.labels("checkpoint").inc(max(0.0, spent))

    def _save(self) -> None:
        """Save progress, then commit offsets. Saves a new version, evaluated on the held-out set, only when
        votes were trained; otherwise records the further offsets on the current version (same weights)."""
        started = time.perf_counter()
        s = self.settings
        offsets = self.consumer.positions()
        if self.unsaved_votes:
            clock = cpu_clock()
            evaluating = clock()
            with self.metrics.cpu_stage("evaluate"):
                heldout = self.store.heldout(s.heldout_eval_size, s.heldout_votes_per_response)
                score = self.trainer.evaluate(heldout) if heldout else None
                self._publish_distribution("heldout", Distribution.of([e.user_id for e in heldout]))
            self._evaluate_cpu = clock() - evaluating
            up = self.trainer.up_trained
            down = self.trainer.down_trained
            state = new_state(
                self.version + 1,
                self.version,
                s.base_model,
                self.state.trainable_layers,
                offsets=offsets,
                votes_trained=self.state.votes_trained + self.unsaved_votes,
                pairs_trained=self.state.pairs_trained + self.unsaved_pairs,
                up_trained=up,
                down_trained=down,
                trained_feedback_ids=self.store.trained_in(self.version + 1),
                heldout=score,
            )
            self.checkpoints.save(state, self.trainer.model, self.trainer.optimizer)
            self.version, self.state = state.version, state
            self.unsaved_votes = self.unsaved_pairs = 0
            self.checkpoints.prune(s.keep_checkpoints)
            self.store.prune_interactions(s.max_interactions, self.version)
            self.scorer.refresh(force=True)
            log.info(
                "checkpoint v%d: %d votes trained, held-out %s", self.version, state.votes_trained, score
            )
        elif offsets != self.state.offsets:
            self.checkpoints.update_offsets(self.version, offsets)
            self.state = self.state.model_copy(update={"offsets": offsets})
        else:
            self.saved_at = time.monotonic()
            return
        # For lag monitoring only (resuming uses the checkpoint's offsets): a commit failing past
        # COMMIT_GIVE_UP_S is skipped and the next one catches up.
        self.consumer.commit(offsets, COMMIT_GIVE_UP_S)
        self.saved_at = time.monotonic()
        self._publish_state_metrics()
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)

    def _publish_identities(self) -> None:
        """Votes per identity among the latest votes received and trained, and how many were over the cap."""
        self._publish_distribution("received", self.store.identities(trained=False))
        self._publish_distribution("trained", self.store.identities(trained=True))
        self.metrics.votes_over_cap.set(self.store.over_cap())

    def _publish_distribution(self, name: str, distribution: Distribution) -> None:
        self.metrics.identities.labels(name).set(distribution.identities)
        self.metrics.identity_top_share.labels(name).set(distribution.top_share)

    def _publish_state_metrics(self) -> None:
        self.metrics.examples_seen.labels("pointwise").set(self.state.votes_trained)
        self.metrics.examples_seen.labels("pairwise").set(self.state.pairs_trained)
        # The scores of this very version: NaN (not measured) rather than a previous version's numbers.
        heldout = self.state.heldout
        nan = float("nan")
        self.metrics.heldout_votes.set(0 if heldout is None else heldout.votes)
        self.metrics.heldout_accuracy.set(nan if heldout is None else heldout.accuracy)
        self.metrics.heldout_auc.set(nan if heldout is None or heldout.auc is None else heldout.auc)
        self.metrics.heldout_balanced_accuracy.set(
            nan if heldout is None or heldout.balanced_accuracy is None else heldout.balanced_accuracy
        )
