"""The learner's main loop: read a batch, score it, one PPO iteration, checkpoint, commit, gate, publish.

Order within an iteration, and why:
1. take ``batch_size`` usable Interaction events from Kafka (stale, malformed or too long ones are skipped
   and counted);
2. live mode trains on the served responses; generate mode samples new ones with the current policy;
3. score them through the reward service;
4. one PPO iteration (learner/trainer.py);
5. every ``publish_every`` iterations, run the promotion gates and record the verdict as *pending*;
6. checkpoint model, value head, optimizer, β, consumed offsets and the pending verdict, atomically;
7. commit the offsets to the consumer group — only now, so a crash before this point re-reads the batch
   and the restored checkpoint has not counted it: no event lost, none counted twice;
8. publish the pending verdict: promoted weights to the store plus a PROMOTED record, or a REJECTED
   record with the reason, after which training resumes from the last promoted weights. A crash between
   6 and 8 is finished on restart, idempotently (by sha256).
"""

import logging
import threading
import time
from pathlib import Path

import torch
from prometheus_client import start_http_server

from learner import checkpoint, gates
from learner import metrics as m
from learner.checkpoint import LearnerState, PendingPublication
from learner.config import LearnerConfig
from learner.model import PolicyWithValueHead, generate, load_lm, load_tokenizer
from learner.publish import PolicyTopic, open_store
from learner.reward import RewardClient, ScoreRequest
from learner.rollout import InteractionReader, Rollout
from learner.trainer import IterationStats, PPOTrainer
from proto import wire
from proto.policy_log import PolicyLog
from proto.events_pb2 import Interaction, PolicyStatus, PolicyVersion
from proto.topics import KafkaSettings

log = logging.getLogger(__name__)


class Learner:
    """The PPO learner service: state, models, Kafka reader, reward client and publisher.

    Construction resumes from the newest checkpoint under ``cfg.checkpoint_dir`` when there is one (and
    finishes its pending publication); otherwise it starts from the version serving serves (the policy
    topic's pinned or latest promoted version), or from ``cfg.init_model`` (version 0). The reference is
    always ``cfg.init_model``.
    """

    def __init__(self, cfg: LearnerConfig, kafka: KafkaSettings):
        self.cfg = cfg
        # /metrics answers from the start, so supervisors see the process alive while models load.
        self._metrics_server, _ = start_http_server(cfg.metrics_port)
        self.metrics_port = self._metrics_server.server_port
        torch.manual_seed(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.init_model)
        self.reference = load_lm(cfg.init_model, trainable=False)
        self.store = open_store(cfg.store_uri)
        self.policy_topic = PolicyTopic(kafka)
        self.reward = RewardClient(cfg.reward_url, cfg.reward_timeout_s)
        self.heldout = gates.load_prompts(cfg.heldout_prompts)
        self.canaries = gates.load_prompts(cfg.canary_prompts)

        resume = checkpoint.latest(cfg.checkpoint_dir)
        if resume is not None:
            self.policy = PolicyWithValueHead(load_lm(cfg.init_model, trainable=True))
            self.trainer = PPOTrainer(cfg, self.policy, self.reference)
            self.state = checkpoint.load(resume, self.policy, self.trainer.optimizer)
            self.trainer.kl_ctl.value = self.state.kl_coef
            log.info("resumed from %s at iteration %d", resume, self.state.iteration)
        else:
            # Start from what serving serves (live data comes from it): pinned, else latest promoted, else 0.
            policies = self.policy_topic.read()
            version = policies.target()
            path = self._weights_of(policies, version)
            self.policy = PolicyWithValueHead(load_lm(path, trainable=True))
            self.trainer = PPOTrainer(cfg, self.policy, self.reference)
            self.state = LearnerState(kl_coef=cfg.init_kl_coef, parent_version=version)
            log.info("starting from version %d (%s)", version, path)
        if self.state.baseline_answers is None:
            _, answers = gates.greedy_answers(
                self.policy.lm, self.tokenizer, self.heldout, cfg.gate_max_new_tokens
            )
            self.state.baseline_answers = gates.answer_texts(self.tokenizer, answers)

        self.reader = InteractionReader(kafka, cfg.group_id, self.state.offsets)
        m.POLICY_VERSION.set(self.state.parent_version)
        m.KL_COEF.set(self.trainer.kl_ctl.value)
        if self.state.pending is not None:
            self.publish(self.state.pending)

    def _weights_of(self, policies: PolicyLog, version: int) -> Path:
        """Directory of ``version``'s weights: the store's copy, or ``cfg.init_model`` for version 0."""
        return self.store.local_dir(policies.versions[version].checkpoint_uri) if version else self.cfg.init_model

    def _revert(self, policies: PolicyLog) -> None:
        """Back to the parent (last promoted) version's weights, with fresh Adam moments.

        Training on top of a rejected candidate would compound whatever broke its gate (e.g. an answer that
        no longer ends); the value head is kept, its estimates are still about the same reward model.
        """
        path = self._weights_of(policies, self.state.parent_version)
        self.policy.lm.load_state_dict(load_lm(path, trainable=False).state_dict())
        self.trainer.optimizer.state.clear()
        log.info("rejected candidate discarded: training resumes from v%d", self.state.parent_version)

    # 1. which events are usable
    def _reject(self, event: Interaction) -> str | None:
        """None to train on ``event``, else the reason to skip it (a metrics label)."""
        if not event.prompt_token_ids or not event.prompt_messages:
            return "malformed"
        if len(event.prompt_token_ids) > self.cfg.max_prompt_length:
            return "too_long"
        if self.cfg.mode == "generate":
            return None
        if not event.response_token_ids or len(event.behaviour_logprobs) != len(event.response_token_ids):
            return "malformed"
        if event.finish_reason == "abort":
            return "aborted"
        if len(event.response_token_ids) > self.cfg.max_live_response_length:
            return "too_long"
        if self.state.parent_version - event.policy_version > self.cfg.max_staleness:
            return "stale"
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
                    list(e.behaviour_logprobs),
                )
                for e, msgs in zip(events, messages)
            ]
        prompts = [list(e.prompt_token_ids) for e in events]
        torch.manual_seed(self.cfg.seed + self.state.iteration)  # a restarted iteration samples the same
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
            )
            for e, msgs, p, r in zip(events, messages, prompts, responses)
        ]

    def iterate(self, stop: threading.Event) -> IterationStats | None:
        """Run one iteration (steps 1–8 of the module docstring); None if ``stop`` was set while waiting."""
        cfg, state = self.cfg, self.state
        batch = self.reader.next_batch(cfg.batch_size, self._reject, cfg.poll_timeout_s, stop.is_set)
        if batch is None:
            return None
        start = time.monotonic()
        rollouts = self._rollouts(batch.events)
        # 3. score
        scores, _ = self.reward.score([ScoreRequest(r.prompt_messages, r.response_text) for r in rollouts])
        # 4. PPO
        stats = self.trainer.step(rollouts, scores, state.iteration)
        state.iteration += 1
        state.kl_coef = stats.kl_coef
        state.offsets = self.reader.consumed_offsets()
        state.events_consumed += len(batch.events)
        for reason, n in batch.dropped.items():
            state.dropped[reason] = state.dropped.get(reason, 0) + n
        state.response_ids = [r.response_id for r in rollouts]
        # 5. gates, as a pending verdict
        if state.iteration % cfg.publish_every == 0:
            report = gates.evaluate(
                self.policy.lm,
                self.reference,
                self.tokenizer,
                self.reward,
                self.heldout,
                state.baseline_answers,
                self.canaries,
                cfg.kl_budget,
                cfg.reward_tolerance,
                cfg.gate_max_new_tokens,
            )
            state.pending = PendingPublication(
                report.passed, report.reason, report.kl, report.reward_mean, report.answers
            )
        # 6. checkpoint, 7. then commit
        checkpoint.save(cfg.checkpoint_dir, state, self.policy, self.trainer.optimizer, cfg.keep_checkpoints)
        self.reader.commit(state.offsets)
        # 8. publish
        if state.pending is not None:
            self.publish(state.pending)
        self._observe(stats, batch.dropped, len(rollouts), time.monotonic() - start)
        log.info(
            "iteration %d: %s",
            state.iteration,
            {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.as_dict().items()},
        )
        return stats

    def publish(self, pending: PendingPublication) -> PolicyVersion:
        """Publish ``pending``, idempotent by the weights' sha256; a promoted version becomes the parent."""
        state = self.state
        staged = self.store.stage(self.policy.lm, self.tokenizer)
        policies = self.policy_topic.read()
        record = next((r for r in policies.versions.values() if r.weights_sha256 == staged.sha256), None)
        if record is not None:
            log.info("version %d already published with these weights", record.version)
            if record.status == PolicyStatus.POLICY_STATUS_PROMOTED:
                self.store.commit(staged, record.version)
            else:
                self.store.discard(staged)
        else:
            record = PolicyVersion(
                version=policies.next_version(),
                parent=state.parent_version,
                weights_sha256=staged.sha256,
                created_at=wire.now(),
                kl_to_reference=pending.kl,
                reward_mean=pending.reward_mean,
            )
            if pending.passed:
                record.status = PolicyStatus.POLICY_STATUS_PROMOTED
                record.checkpoint_uri = self.store.commit(staged, record.version)
            else:
                record.status = PolicyStatus.POLICY_STATUS_REJECTED
                record.reason = pending.reason
                self.store.discard(staged)
            self.policy_topic.publish(record)
            log.info(
                "published version %d: %s %s", record.version, PolicyStatus.Name(record.status), record.reason
            )
        if record.status == PolicyStatus.POLICY_STATUS_PROMOTED:
            state.parent_version = record.version
            state.baseline_answers = pending.answers
            m.VERSIONS_PUBLISHED.inc()
            m.POLICY_VERSION.set(record.version)
        else:
            m.VERSIONS_REJECTED.inc()
            self._revert(policies)
        state.pending = None
        return record

    def _observe(
        self, stats: IterationStats, dropped: dict[str, int], n_rollouts: int, duration_s: float
    ) -> None:
        m.REWARD_MEAN.set(stats.reward_mean)
        m.KL_TO_REFERENCE.set(stats.kl)
        m.KL_COEF.set(stats.kl_coef)
        m.POLICY_LOSS.set(stats.policy_loss)
        m.VALUE_LOSS.set(stats.value_loss)
        m.ENTROPY.set(stats.entropy)
        m.CLIP_FRACTION.set(stats.clip_fraction)
        m.APPROX_KL.set(stats.approx_kl)
        m.EXPLAINED_VARIANCE.set(stats.explained_variance)
        if stats.behaviour_gap is not None:
            m.BEHAVIOUR_GAP.set(stats.behaviour_gap)
        m.STEP_DURATION.observe(duration_s)
        m.CONSUMER_LAG.set(self.reader.lag())
        m.ITERATIONS.inc()
        m.ROLLOUTS.inc(n_rollouts)
        for reason, n in dropped.items():
            m.ROLLOUTS_DROPPED.labels(reason).inc(n)

    def run(self, stop: threading.Event | None = None) -> LearnerState:
        """Iterate until ``cfg.max_iterations`` (counted across restarts) or until ``stop`` is set."""
        stop = stop or threading.Event()
        while (
            self.cfg.max_iterations is None or self.state.iteration < self.cfg.max_iterations
        ) and not stop.is_set():
            if self.iterate(stop) is None:
                break
        return self.state

    def close(self) -> None:
        self._metrics_server.shutdown()
        self.reader.close()
        self.policy_topic.close()
        self.reward.close()
