"""The learner's main loop: read a batch, score it, one PPO iteration, checkpoint, commit, gate, publish.

Order within an iteration, and why:
1. take every usable Interaction event waiting in Kafka, at least ``min_batch_size`` and at most
   ``batch_size`` (stale, duplicate, malformed or too long ones are skipped and counted);
2. follow the served policy (learner/follow.py): after an operator's rollback, pin or unpin since the
   last iteration, re-baseline on the version serving serves (its weights, fresh optimizer moments and
   reward normalisation, its held-out answers as the gates' baseline), checkpointed at once; while a pin
   is in force, or a live canary is open (a version is CANDIDATE or CANARY), train on but gate and publish
   nothing. Then live mode trains on the served responses;
   generate mode samples new ones with the current policy;
3. score them through the reward service; until a reward-model version has shown held-out balanced
   accuracy of ``min_reward_accuracy``, rewind to the checkpoint's offsets and wait (no PPO on rewards no
   better than chance; the events are read again once it is);
4. one PPO iteration (learner/trainer.py);
5. every ``publish_every`` iterations, run the promotion gates and record the verdict as *pending*;
6. checkpoint model, value head, optimizer, β, consumed offsets and the pending verdict, atomically;
7. commit the offsets to the consumer group — only now, so a crash before this point re-reads the batch
   and the restored checkpoint has not counted it: no event lost, none counted twice;
8. publish the pending verdict: a passing candidate's weights to the store plus a CANDIDATE record (its
   live canary follows, learner/canary_controller.py) or, with ``live_canary`` off, a PROMOTED record;
   either way it becomes the parent at once and training goes on from it. A failing one: a REJECTED
   record with the reason, after which training resumes from the parent's weights; a passing candidate
   whose answers did not change is not published (training goes on from it). A crash between 6 and 8 is
   finished on restart, idempotently (by sha256). A verdict is dropped, with the reason in the log, when
   by then its parent or an ancestor was rolled back, a pin is in force or a live canary is open: the
   learner never publishes a descendant of a rolled-back version, nor anything while pinned, nor a second
   candidate beside an open one.

Under torchrun this is rank 0's loop; the other ranks run :func:`run_worker` and take part in step 4 only
(learner/distributed.py).
"""

import logging
import math
import threading
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import torch
from prometheus_client import CollectorRegistry, start_http_server

from learner import checkpoint, follow, gates
from learner.checkpoint import LearnerState, PendingPublication
from learner.distributed import SINGLE, Ranks, Step, Stop, serve, snapshot
from learner.metrics import LearnerMetrics
from learner.model import PolicyWithValueHead, ReferenceTop, generate, load_lm, load_tokenizer
from learner.ppo import RewardNormalizer
from learner.publish import PolicyTopic, open_store
from learner.reward import RewardClient, transient
from learner.rollout import InteractionReader, Rollout
from learner.settings import Settings
from learner.trainer import IterationStats, PPOTrainer
from proto import wire
from proto.device import autocast, resolve_device
from proto.events_pb2 import Interaction, PolicyStatus, PolicyVersion
from proto.policy_log import PolicyLog
from proto.score import ScoreInput
from proto.settings import KafkaSettings

log = logging.getLogger(__name__)
# A version with these statuses has its weights in the store and may be a parent.
_PUBLISHED = (PolicyStatus.POLICY_STATUS_CANDIDATE, PolicyStatus.POLICY_STATUS_CANARY,
              PolicyStatus.POLICY_STATUS_PROMOTED)


class Learner:
    """The PPO learner service: state, models, Kafka reader, reward client and publisher.

    Construction resumes from the newest checkpoint under ``cfg.checkpoint_dir`` when there is one (and
    finishes its pending publication, then follows the served policy as before every iteration); otherwise
    it starts from the version serving serves to everyone (the policy topic's pinned or latest promoted
    version, never a descendant of a rolled-back one nor a candidate in its live canary: learner/follow.py),
    or from ``cfg.base_model`` (version 0). The reference is always ``cfg.base_model``'s top layers over the
    shared frozen trunk.

    ``ranks``: under torchrun, rank 0's place (the workers must be running :func:`run_worker`); ``device``:
    where the models go (default: ``cfg.device`` resolved, proto/device.py); ``stop``: the event that
    stops :meth:`run` by default and ends the retries of Kafka calls during an outage (proto/kafka.py:
    every Kafka call is retried with backoff while the broker is unreachable, so an outage pauses the
    loop instead of ending it).
    """

    def __init__(
        self,
        cfg: Settings,
        kafka: KafkaSettings,
        ranks: Ranks = SINGLE,
        device: torch.device | None = None,
        stop: threading.Event | None = None,
    ):
        self.cfg = cfg
        self.stop = stop or threading.Event()
        self.ranks = ranks
        self.device = device or resolve_device(cfg.device)
        # /metrics answers from the start, so supervisors see the process alive while models load.
        self.metrics = LearnerMetrics()
        self._metrics_server, _ = start_http_server(
            cfg.metrics_port, addr=cfg.metrics_host, registry=self.metrics.registry
        )
        self.metrics_port = self._metrics_server.server_port
        torch.manual_seed(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.base_model)
        self.store = open_store(cfg.store_uri)
        self.policy_topic = PolicyTopic(kafka, self.stop)
        self.reward = RewardClient(cfg.reward_url, cfg.reward_timeout_s)
        self.heldout = gates.load_prompts(cfg.heldout_prompts)
        self.canaries = gates.load_prompts(cfg.canary_prompts)

        sft = load_lm(cfg.base_model, trainable=False, device=self.device)
        resume = checkpoint.latest(cfg.checkpoint_dir)
        if resume is not None:
            self.policy = PolicyWithValueHead(
                load_lm(cfg.base_model, trainable=False, device=self.device), cfg.trainable_layers
            )
            self.trainer = PPOTrainer(cfg, self.policy, ReferenceTop(sft, self.policy), ranks)
            self.state = checkpoint.load(resume, self.policy, self.trainer.optimizer)
            self.trainer.kl_ctl.value = self.state.kl_coef
            self.trainer.normalizer = RewardNormalizer(**self.state.normalizer)
            log.info("resumed from %s at iteration %d", resume, self.state.iteration)
        else:
            # Start from what serving serves (live data comes from it): pinned, else latest promoted, else 0;
            # an open live canary's candidate is not that (it may yet be rolled back).
            policies = self.policy_topic.read()
            version = follow.base(policies)
            path = self._weights_of(policies, version)
            self.policy = PolicyWithValueHead(
                load_lm(path, trainable=False, device=self.device), cfg.trainable_layers
            )
            self.trainer = PPOTrainer(cfg, self.policy, ReferenceTop(sft, self.policy), ranks)
            self.state = LearnerState(kl_coef=cfg.init_kl_coef, parent_version=version)
            log.info("starting from version %d (%s)", version, path)
        if self.state.anchor_answers is None:
            self.state.anchor_answers = self._heldout_answers(sft)
            with self._precision():
                self.state.anchor_canary_share = gates.canary_ended_share(
                    sft, self.tokenizer, self.canaries, cfg, cfg.seed
                )
        del sft  # the reference keeps only its top layers
        if self.state.baseline_answers is None:
            self.state.baseline_answers = self._heldout_answers(self.policy.lm)
        self.recent = set(self.state.recent_response_ids)
        self._batch_ids: set[str] = set()

        self.reader = InteractionReader(kafka, cfg.group_id, self.state.offsets, self.stop)
        self.metrics.policy_version.set(self.state.parent_version)
        self.metrics.kl_coef.set(self.trainer.kl_ctl.value)
        # 1 until a call fails: 0 means "failed and waiting", not "not yet asked"
        self.metrics.reward_service_up.set(1)
        if self.state.pending is not None:
            self.publish(self.state.pending)
        self._follow_served()
        self._sync_ranks()

    def _precision(self):
        """Mixed precision of forward passes and generation when ``cfg.dtype`` is bfloat16."""
        return autocast(self.device, self.cfg.dtype)

    def _sync_ranks(self) -> None:
        """Give every rank this rank's trained state (after a resume or a revert); no-op for one process."""
        if self.ranks.distributed:
            self.ranks.broadcast(snapshot(self.trainer))

    def _heldout_answers(self, lm) -> list[list[str]]:
        with self._precision():
            _, answers = gates.greedy_answers(lm, self.tokenizer, self.heldout, self.cfg.gate_max_new_tokens)
        return gates.answer_texts(self.tokenizer, answers)

    def _weights_of(self, policies: PolicyLog, version: int) -> Path:
        """Directory of ``version``'s weights: the store's copy, or ``cfg.base_model`` for version 0."""
        return (
            self.store.local_dir(policies.versions[version].checkpoint_uri)
            if version
            else self.cfg.base_model
        )

    def _load_version(self, policies: PolicyLog, version: int) -> None:
        """``version``'s weights into the policy, with fresh Adam moments, on every rank.

        The value head is kept: its estimates are still about the same reward model.
        """
        path = self._weights_of(policies, version)
        self.policy.lm.load_state_dict(load_lm(path, trainable=False).state_dict())
        self.trainer.optimizer.state.clear()
        self._sync_ranks()

    def _revert(self, policies: PolicyLog) -> None:
        """Back to the parent version's weights, with fresh Adam moments.

        Training on top of a rejected candidate would compound whatever broke its gate (e.g. an answer that
        no longer ends).
        """
        self._load_version(policies, self.state.parent_version)
        log.info("candidate discarded: training resumes from v%d", self.state.parent_version)

    def _follow_served(self) -> None:
        """Train from what serving serves (learner/follow.py): after a rollback, a pin or an unpin, or
        the end of a live canary of a version it did not train from, re-baseline on it; while a pin is in
        force or a live canary is open, publish nothing. Reads the policy topic (small and compacted;
        retried through broker outages like every topic read)."""
        state = self.state
        policies = self.policy_topic.read()
        decision = follow.decide(policies, state.parent_version, state.pinned_version, state.live_canary)
        if decision.pinned != state.pinned_version:
            if decision.pinned is not None:
                log.warning("%s: training from it, no candidate gated or published until the unpin",
                            decision.reason)
            else:
                log.warning("the pin of v%d was lifted: candidates are published again", state.pinned_version)
        state.pinned_version = decision.pinned
        self.metrics.publishing_paused.labels("pin").set(decision.pinned is not None)
        self._hold_for_live_canary(policies, decision.live_canary)
        if decision.version != state.parent_version:
            self._rebaseline(policies, decision)

    def _hold_for_live_canary(self, policies: PolicyLog, live_canary: int | None) -> None:
        """Note the open live canary (None: none), saying in the log when it opens or closes."""
        state = self.state
        if live_canary != state.live_canary:
            if state.live_canary is not None:
                closed = policies.versions.get(state.live_canary)
                log.warning("the live canary of v%d ended (%s): candidates are gated and published again",
                            state.live_canary,
                            follow.status_name(closed.status) if closed is not None else "no record")
            if live_canary is not None:
                log.warning("v%d's live canary is open (%s): training on, no candidate gated or published "
                            "until it is promoted or rolled back", live_canary,
                            follow.status_name(policies.versions[live_canary].status))
        state.live_canary = live_canary
        self.metrics.publishing_paused.labels("canary").set(live_canary is not None)

    def _rebaseline(self, policies: PolicyLog, decision: follow.Follow) -> None:
        """Train from ``decision.version`` from now on: its weights, fresh Adam moments and reward
        normalisation (statistics of another policy's samples), its held-out answers as the gates'
        baseline; checkpointed at once, so a restart resumes re-baselined."""
        state = self.state
        previous = state.parent_version
        self.trainer.normalizer = RewardNormalizer()  # before _load_version, which gives it to every rank
        self._load_version(policies, decision.version)
        state.parent_version = decision.version
        state.normalizer = asdict(self.trainer.normalizer)
        state.baseline_answers = self._heldout_answers(self.policy.lm)
        state.response_ids = []  # this checkpoint trained no batch
        checkpoint.save(self.cfg.checkpoint_dir, state, self.policy, self.trainer.optimizer,
                        self.cfg.keep_checkpoints)
        self.metrics.policy_version.set(decision.version)
        log.warning("%s: re-baselined from v%d on v%d, what serving serves (optimizer moments and reward "
                    "normalisation reset)", decision.reason, previous, decision.version)

    # 1. which events are usable
    def _reject(self, event: Interaction) -> str | None:
        """None to train on ``event``, else the reason to skip it (a metrics label)."""
        if not event.prompt_token_ids or not event.prompt_messages:
            return "malformed"
        if event.response_id in self.recent or event.response_id in self._batch_ids:
            return "duplicate"
        if len(event.prompt_token_ids) > self.cfg.max_prompt_length:
            return "too_long"
        if self.cfg.mode == "generate":
            return None
        if not event.response_token_ids or len(event.behaviour_logprobs) != len(event.response_token_ids):
            return "malformed"
        if not all(math.isfinite(x) for x in event.behaviour_logprobs):
            return "malformed"
        if event.finish_reason == "abort":
            return "aborted"
        if len(event.response_token_ids) > self.cfg.max_live_response_length:
            return "too_long"
        if self.state.parent_version - event.policy_version > self.cfg.max_staleness:
            return "stale"
        self._batch_ids.add(event.response_id)
        return None

    # 2. rollouts: served responses (live) or fresh samples of the current policy (generate)
    def _rollouts(self, events: list[Interaction]) -> list[Rollout]:
        messages = [[{"role": msg.role, "content": msg.content} for msg in e.prompt_messages] for e in events]
        if self.cfg.mode == "live":
            return [
                Rollout(
                    e.response_id,
                    msgs,
                    list(e.prompt_token_ids),
                    list(e.response_token_ids),
                    e.response_text,
                    e.policy_version,
                    e.finish_reason or "stop",
                    list(e.behaviour_logprobs),
                )
                for e, msgs in zip(events, messages)
            ]
        prompts = [list(e.prompt_token_ids) for e in events]
        torch.manual_seed(self.cfg.seed + self.state.iteration)  # a restarted iteration samples the same
        with self._precision():
            responses = generate(
                self.policy.lm, prompts, self.cfg.response_length, self.tokenizer.eos_token_id, greedy=False
            )
        return [
            Rollout(
                e.response_id,
                msgs,
                p,
                r,
                self.tokenizer.decode(r, skip_special_tokens=True),
                self.state.parent_version,
                "stop" if r[-1] == self.tokenizer.eos_token_id else "length",
            )
            for e, msgs, p, r in zip(events, messages, prompts, responses)
        ]

    def _remember(self, response_ids: list[str]) -> None:
        """Add ``response_ids`` to the dedup window (the newest ``dedup_window`` ids)."""
        ids = (
            (self.state.recent_response_ids + response_ids)[-self.cfg.dedup_window :]
            if self.cfg.dedup_window
            else []
        )
        self.state.recent_response_ids = ids
        self.recent = set(ids)

    def _gate(self) -> gates.GateReport | None:
        """The gates' verdict on the current policy, or None when the reward service cannot be reached:
        the candidate keeps training and is gated at the next ``publish_every``."""
        state = self.state
        try:
            return gates.evaluate(
                self.policy.lm,
                self.trainer.reference,
                self.tokenizer,
                self.reward,
                self.heldout,
                state.baseline_answers,
                state.anchor_answers,
                self.canaries,
                state.anchor_canary_share,
                self.cfg,
                seed=self.cfg.seed + state.iteration,
            )
        except httpx.HTTPError as exc:
            if not transient(exc):
                raise
            log.warning("reward service unreachable during the gates (%r): gating again later", exc)
            self.metrics.reward_service_up.set(0)
            return None

    def iterate(self, stop: threading.Event) -> IterationStats | None:
        """Run one iteration (steps 1–8 of the module docstring); None if ``stop`` was set while waiting or
        the reward model is not yet good enough (then after waiting ``reward_wait_s``)."""
        cfg, state = self.cfg, self.state
        self._batch_ids: set[str] = set()
        with self.metrics.stage("read"):
            batch = self.reader.next_batch(
                cfg.min_batch_size, cfg.batch_size, self._reject, cfg.poll_timeout_s, stop.is_set
            )
        if batch is None:
            return None
        start = time.monotonic()
        with self.metrics.stage("follow"):
            self._follow_served()
        with self.metrics.stage("experience"):
            rollouts = self._rollouts(batch.events)
        # 3. score, and only from a reward model that beats chance on its held-out votes
        with self.metrics.stage("score"):
            try:
                scores = self.reward.score(
                    [
                        ScoreInput(
                            messages=r.prompt_messages,
                            response=r.response_text,
                            finish_reason=r.finish_reason,
                        )
                        for r in rollouts
                    ]
                )
            except httpx.HTTPError as exc:
                if not transient(exc):
                    raise
                # Down or restarting: the batch goes back to the topic and is read again, nothing is lost.
                log.warning("reward service unreachable (%r): batch rewound; waiting", exc)
                self.metrics.reward_service_up.set(0)
                self.reader.rewind(state.offsets)
                stop.wait(cfg.reward_wait_s)
                return None
        self.metrics.reward_service_up.set(1)
        self.metrics.reward_model_version.set(scores.reward_model_version)
        self.metrics.reward_model_accuracy.set(
            float("nan") if scores.heldout_balanced_accuracy is None else scores.heldout_balanced_accuracy
        )
        if not self._reward_model_ready(scores):
            self.metrics.waiting_for_reward_model.set(1)
            self.reader.rewind(state.offsets)
            stop.wait(cfg.reward_wait_s)
            return None
        self.metrics.waiting_for_reward_model.set(0)
        # 4. PPO, on every rank
        with self.metrics.stage("update"):
            if self.ranks.distributed:
                self.ranks.broadcast(
                    Step(rollouts, scores.rewards, scores.reward_model_version, state.iteration)
                )
            stats = self.trainer.step(rollouts, scores.rewards, scores.reward_model_version, state.iteration)
        state.iteration += 1
        state.kl_coef = stats.kl_coef
        state.normalizer = asdict(self.trainer.normalizer)
        state.offsets = self.reader.consumed_offsets()
        state.events_consumed += len(batch.events)
        for reason, n in batch.dropped.items():
            state.dropped[reason] = state.dropped.get(reason, 0) + n
        state.response_ids = [r.response_id for r in rollouts]
        self._remember(state.response_ids)
        # 5. gates, as a pending verdict
        report = None
        if state.iteration % cfg.publish_every == 0:
            if state.pinned_version is not None:
                log.info("v%d is pinned: candidate not gated", state.pinned_version)
            elif state.live_canary is not None:
                log.info("v%d's live canary is open: candidate not gated", state.live_canary)
            else:
                with self.metrics.stage("gates"), self._precision():
                    report = self._gate()
        if report is not None:
            state.pending = PendingPublication(
                report.passed, report.reason, report.kl, report.reward_mean, report.answers, report.changed
            )
        # 6. checkpoint, 7. then commit
        with self.metrics.stage("checkpoint"):
            checkpoint.save(
                cfg.checkpoint_dir, state, self.policy, self.trainer.optimizer, cfg.keep_checkpoints
            )
            self.reader.commit(state.offsets)
        # 8. publish
        if state.pending is not None:
            with self.metrics.stage("publish"):
                self.publish(state.pending)
        self._observe(stats, batch.dropped, len(rollouts), time.monotonic() - start)
        log.info(
            "iteration %d: %d responses, %s",
            state.iteration,
            len(rollouts),
            {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.as_dict().items()},
        )
        return stats

    def _reward_model_ready(self, scores) -> bool:
        if self.state.reward_model_trusted:
            return True
        accuracy = scores.heldout_balanced_accuracy
        ready = self.cfg.min_reward_accuracy <= 0 or (
            accuracy is not None
            and accuracy >= self.cfg.min_reward_accuracy
            and scores.heldout_votes >= self.cfg.min_reward_heldout_votes
        )
        self.state.reward_model_trusted = ready
        if not ready:
            log.info(
                "reward model v%d: held-out balanced accuracy %s on %d votes; PPO waits for >= %.2f on >= %d",
                scores.reward_model_version,
                accuracy,
                scores.heldout_votes,
                self.cfg.min_reward_accuracy,
                self.cfg.min_reward_heldout_votes,
            )
        return ready

    def publish(self, pending: PendingPublication) -> PolicyVersion | None:
        """Publish ``pending``, idempotent by the weights' sha256; a passing candidate becomes the parent.

        Passing: its weights are committed to the store and it is published CANDIDATE (``cfg.live_canary``:
        the canary controller takes it from there) or PROMOTED; failing: REJECTED, and the weights go back
        to the parent's. Returns the version record, or None when a passing candidate's answers did not
        change (serving it would change nothing: nothing is published and training continues from the
        candidate's weights), or when the verdict is dropped because the parent's lineage was rolled back, a
        pin is in force or a live canary is open (learner/follow.py). A record with these weights already on
        the topic (a restart finishing a publish its crash interrupted) is taken as this publication, in
        whatever state it is now.
        """
        state = self.state
        if pending.passed and not pending.changed:
            log.info("candidate's held-out answers equal v%d's: not published", state.parent_version)
            state.pending = None
            return None
        policies = self.policy_topic.read()
        decision = follow.decide(policies, state.parent_version, state.pinned_version, state.live_canary)
        if decision.pinned is not None or decision.version != state.parent_version:
            # Rolled back or pinned since the gates ran (or before a restart finishing this publish).
            return self._drop(pending, policies, decision)
        staged = self.store.stage(self.policy.lm, self.tokenizer)
        record = next((r for r in policies.versions.values() if r.weights_sha256 == staged.sha256), None)
        if record is not None:
            # Looked up before the live-canary check: the open candidate may be this very publication.
            log.info("version %d already published with these weights", record.version)
            if record.status in _PUBLISHED:
                self.store.commit(staged, record.version)
            else:
                self.store.discard(staged)
        elif decision.live_canary is not None:
            # Opened since the gates ran (or before a restart finishing this publish): one at a time.
            self.store.discard(staged)
            return self._drop(pending, policies, decision)
        else:
            record = PolicyVersion(
                version=policies.next_version(),
                parent=state.parent_version,
                weights_sha256=staged.sha256,
                created_at=wire.now(),
                kl_to_reference=pending.kl,
                reward_mean=pending.reward_mean,
            )
            if pending.passed and self.cfg.live_canary:
                record.status = PolicyStatus.POLICY_STATUS_CANDIDATE
                record.reason = (f"passed the offline gates: KL to reference {pending.kl:.3f} nats (budget "
                                 f"{self.cfg.kl_budget}), held-out reward {pending.reward_mean:.3f}")
                record.checkpoint_uri = self.store.commit(staged, record.version)
            elif pending.passed:
                record.status = PolicyStatus.POLICY_STATUS_PROMOTED
                record.checkpoint_uri = self.store.commit(staged, record.version)
            else:
                record.status = PolicyStatus.POLICY_STATUS_REJECTED
                record.reason = pending.reason
                self.store.discard(staged)
            self.policy_topic.publish(record)
            policies.apply(wire.key_of(record), record)
            log.info(
                "published version %d: %s %s", record.version, PolicyStatus.Name(record.status), record.reason
            )
        if record.status in _PUBLISHED:
            # A candidate is the parent at once: the learner trains on from it during its live canary, and
            # re-baselines on the incumbent should it be rolled back.
            state.parent_version = record.version
            state.baseline_answers = pending.answers
            self.metrics.versions_published.inc()
            self.metrics.policy_version.set(record.version)
            if record.status != PolicyStatus.POLICY_STATUS_PROMOTED:
                self._hold_for_live_canary(policies, record.version)
        else:
            if record.status == PolicyStatus.POLICY_STATUS_REJECTED:
                self.metrics.versions_rejected.inc()
            else:  # published before a crash, and rolled back since: not a parent
                log.warning(
                    "version %d is %s (%s)", record.version, PolicyStatus.Name(record.status), record.reason
                )
            self._revert(policies)
        state.pending = None
        return record

    def _drop(self, pending: PendingPublication, policies: PolicyLog, decision: follow.Follow) -> None:
        """Drop ``pending`` unpublished, saying why; a failed candidate's weights go back to the parent's
        unless the next :meth:`_follow_served` re-baselines anyway. Returns None (nothing published)."""
        state = self.state
        log.warning("candidate of v%d (gates %s) dropped, not published: %s", state.parent_version,
                    "passed" if pending.passed else f"failed: {pending.reason}", decision.reason)
        state.pending = None
        if not pending.passed and decision.version == state.parent_version:
            self._revert(policies)
        return None

    def _observe(
        self, stats: IterationStats, dropped: dict[str, int], n_rollouts: int, duration_s: float
    ) -> None:
        m = self.metrics
        m.reward_mean.set(stats.reward_mean)
        m.kl_to_reference.set(stats.kl)
        m.sampled_kl.set(stats.sampled_kl)
        m.kl_coef.set(stats.kl_coef)
        m.policy_loss.set(stats.policy_loss)
        m.value_loss.set(stats.value_loss)
        m.value_clip_fraction.set(stats.value_clip_fraction)
        m.entropy.set(stats.entropy)
        m.clip_fraction.set(stats.clip_fraction)
        m.approx_kl.set(stats.approx_kl)
        m.ratio_mean.set(stats.ratio_mean)
        m.grad_norm.set(stats.grad_norm)
        m.explained_variance.set(stats.explained_variance)
        if stats.behaviour_gap is not None:
            m.behaviour_gap.set(stats.behaviour_gap)
            m.truncated_fraction.set(stats.truncated_fraction)
        m.step_duration.observe(duration_s)
        lag = self.reader.lag()
        if lag is not None:
            m.consumer_lag.set(lag)
        m.iterations.inc()
        m.rollouts.inc(n_rollouts)
        for reason, n in dropped.items():
            m.rollouts_dropped.labels(reason).inc(n)

    def run(self, stop: threading.Event | None = None) -> LearnerState:
        """Iterate until ``cfg.max_iterations`` (counted across restarts) or until ``stop`` (default: the
        constructor's) is set; then stop the other ranks, if any."""
        stop = stop or self.stop
        while (
            self.cfg.max_iterations is None or self.state.iteration < self.cfg.max_iterations
        ) and not stop.is_set():
            self.iterate(stop)
        if self.ranks.distributed:
            self.ranks.broadcast(Stop())
        return self.state

    def close(self) -> None:
        self._metrics_server.shutdown()
        self.reader.close()
        self.policy_topic.close()
        self.reward.close()


def run_worker(cfg: Settings, ranks: Ranks, device: torch.device) -> int:
    """Ranks 1.. of a torchrun job: the policy, reference and optimizer, trained in step with rank 0 until
    it stops (learner/distributed.py); returns the iterations trained.

    The first rank of each machine also answers ``/metrics`` on ``cfg.metrics_port``, with no series (a
    probe target and an ``up`` for Prometheus): the learner's series come from rank 0 alone.
    """
    if ranks.local_rank == 0:
        start_http_server(cfg.metrics_port, addr=cfg.metrics_host, registry=CollectorRegistry())
    # Version 0 everywhere: the trunk is the SFT model's on every version, and rank 0's Sync brings the
    # trained part. The reference is v0's top, copied here before anything trains it.
    policy = PolicyWithValueHead(
        load_lm(cfg.base_model, trainable=False, device=device), cfg.trainable_layers
    )
    trainer = PPOTrainer(cfg, policy, ReferenceTop(policy.lm, policy), ranks)
    return serve(ranks, trainer)
