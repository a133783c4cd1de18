"""Responses trained per CPU-second: today's learner, the reworked learner and TRL's PPOTrainer, one run.

Run (needs the Kafka broker: ``bash deploy/kafka/kafka.sh start``), from the repository root:

    .state/venv/bin/python bench/ppo/bench_ppo.py                # 64 events; sides old,new,new-nogates,trl
                                                                 # (~20 minutes on 2 shared cores)
    .state/venv/bin/python bench/ppo/bench_ppo.py --events 8     # smoke run (~6 minutes)
    .state/venv/bin/python bench/ppo/bench_ppo.py --sides old,old-nogates,new,new-nogates,trl  # +~4 min
    .state/venv/bin/python bench/ppo/bench_ppo.py --batch bench/results/ppo-<time>-batch.json  # same batch
    .state/venv/bin/python bench/ppo/bench_ppo.py --trl-episodes 32   # TRL on 4 iterations (+~4.5 min)

It prints a table and writes ``bench/results/ppo-<UTC time>.json`` (plus the batch it used,
``ppo-<UTC time>-batch.json``, reusable with ``--batch``).

What is compared, on the very same input
-----------------------------------------
1. The batch: ``--events`` (default 64) Interaction events, one per prompt of 64 varied chat prompts (none
   of them a gate prompt), each with a response of at most 64 tokens sampled once from the bundled model
   (SmolLM2-135M-Instruct, float32, temperature 1, no top-k/top-p) and its real behaviour log-probs
   (recomputed by a full forward, as ``tests/learner/conftest.py``'s ``make_interactions`` does). It is
   sampled once per run (or loaded with ``--batch``), saved, and put on a fresh interactions topic for
   every learner side, so both learners train on exactly the same events.
2. ``old``: "today's" learner, the code of commit ``--today`` (default 4d9a3da, the last commit before
   the learner rework landed as 9e6bdcb),
   extracted with ``git archive`` to ``/tmp/learner-<commit>`` and run from there (that directory first on
   ``PYTHONPATH``; the bench checks ``learner.__file__``). Its own ``LearnerConfig`` and defaults: live mode,
   ``batch_size=8``, ``num_minibatches=2``, ``ppo_epochs=4``, lr 3e-6, the whole model trained against a
   full reference model, gates every iteration (``publish_every=1``), full checkpoint (policy, value head,
   Adam) every iteration. 64 events are 8 iterations. One deviation: ``max_staleness`` is lifted, since
   after 3 promotions the version-0 events of the fixed batch would be dropped as stale and the 4th batch
   would never fill (in production those events would come from the newer versions).
   ``old-nogates``: the same with ``publish_every`` past the run (no gates, no publishing); not in the
   default sides (about 4 more minutes): the table also gives each learner's rate with its ``gates`` and
   ``publish`` stage CPU subtracted, from the gates-on runs.
3. ``new``: the working tree's ``learner/`` (9e6bdcb and whatever is uncommitted) with its defaults: live
   mode, an iteration takes every fresh usable event between ``min_batch_size`` 8 and ``batch_size`` 32
   (so 64 events are two iterations), minibatches of 8, micro-batches of 4, ``ppo_epochs=2`` (lr 5e-5), top 4
   of 30 layers trained over a frozen trunk computed once per batch and shared with the reference,
   checkpoints of the trained tensors only. Gates (sampled canaries, v0 anchor) at its default cadence,
   ``publish_every=2``: once, after the second iteration, so the rate is measured at the learner's defaults
   and not amortised by arithmetic. ``new-nogates``: ``publish_every`` past the run.
4. ``trl``: TRL 1.12.0's ``trl.experimental.ppo.PPOTrainer`` with today's learner's PPO sizes (8 responses
   per iteration, 2 minibatches of 4, 4 epochs, lr 3e-6, 64-token responses at temperature 1) on the same
   prompts, ``--trl-episodes`` responses in all (default 8: one iteration, ~1.5 minutes; its cost per
   response is the same every iteration, nothing amortises). It GENERATES ITS OWN RESPONSES
   (TRL has no off-policy/live mode) and runs its reward model in-process, so its CPU includes sampling and
   scoring, which the learners' does not; it keeps a separate value model (one more forward/backward) and
   writes no checkpoint. TRL is NOT a project dependency; install it into the venv for this bench only,
   changing nothing already installed:
       .state/venv/bin/pip freeze | grep -v '^-e\\|@ file' > /tmp/venv-constraints.txt
       .state/venv/bin/pip install trl==1.12.0 --constraint /tmp/venv-constraints.txt
   (it adds datasets, pandas, pyarrow, multiprocess, xxhash). Without it the ``trl`` side is skipped with
   a note. TRL masks by pad id, so its tokenizer gets a distinct pad token (<|endoftext|>, id 0) and left
   padding.

The reward model is the bundled model with a seeded scalar head (``AutoModelForSequenceClassification``).
For the learners it is served on ``/v1/score`` from a thread of THIS (the parent) process, as the reward
service would be its own process: the learners' CPU figures exclude scoring (the server's CPU per side is
reported apart). It answers ``heldout_balanced_accuracy`` 0.9 on 100 votes, so the new learner's
reward-model check passes; today's learner ignores those fields.

Metric
------
Each side runs in its own subprocess. Timed part: from just before the first ``Learner.iterate`` to the
return of the one that consumed the last event (model loading and the start-up greedy answers excluded,
reported as ``startup``); for TRL from ``on_train_begin`` to the last ``on_step_end``. Over it:
``getrusage(RUSAGE_SELF)`` user+system CPU of the subprocess (all its threads: torch's, Kafka's, HTTP),
wall time, responses trained per CPU-second and per wall-second. Per-stage CPU (process CPU, all threads):
for ``new`` from its own ``rlhf_learner_stage_cpu_seconds_total{stage}`` counters (the learner's
registry, read in-process); for ``old``, which has no such counters, from the bench wrapping the same
calls (``reader.next_batch``, ``_rollouts``, ``reward.score``, ``trainer.step``, ``gates.evaluate``,
``checkpoint.save`` + ``reader.commit``, ``publish``) with ``time.process_time``, outermost call only; the
bench also splits ``trainer.step`` into ``make_experience`` and ``ppo_epochs`` (``trainer.update``) on
both. Peak
RSS is the subprocess's ``ru_maxrss`` (start-up included). ``os.getloadavg()`` is recorded at the start and
end of every timed part: the machine is shared, and a load above the core count inflates wall time (CPU
seconds much less so). No warm-up iteration on any side: the batch is consumed once, as in production.
``OMP_WAIT_POLICY=PASSIVE`` everywhere (the learner CLI sets it too).
"""

import argparse
import hashlib
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Which learner code this process imports: the working tree, or (``old`` side) an extracted commit.
CODE_DIR = Path(os.environ.get("BENCH_PPO_CODE_DIR", ROOT))
sys.path.insert(0, str(CODE_DIR))

TODAY = "4d9a3da"
RESPONSE_LENGTH, RM_SEED, SAMPLE_SEED = 64, 1234, 0
TRL_BATCH, TRL_MINIBATCHES, TRL_EPOCHS, TRL_LR = 8, 2, 4, 3e-6
STAGES = ("read", "experience", "score", "update", "gates", "checkpoint", "publish")
SUBSTAGES = ("make_experience", "ppo_epochs")
SIDES = {
    "old": "today's learner.loop (4d9a3da), live, gates on",
    "old-nogates": "today's learner.loop (4d9a3da), live, gates off",
    "new": "new learner.loop (working tree), live, gates on",
    "new-nogates": "new learner.loop (working tree), live, gates off",
    "trl": "TRL 1.12.0 PPOTrainer (own samples + in-process RM)",
}
# 64 varied prompts; none is a held-out or canary prompt of either learner version.
PROMPTS = [
    "What are the main differences between a crocodile and an alligator?",
    "Write a haiku about autumn rain.",
    "How does a refrigerator keep food cold?",
    "Give me a simple recipe for pancakes.",
    "Why do cats purr?",
    "Explain what a black hole is to a ten-year-old.",
    "What is the difference between weather and climate?",
    "Suggest three names for a pet goldfish.",
    "How can I improve my handwriting?",
    "What causes the seasons on Earth?",
    "Write a two-line poem about coffee.",
    "What is a prime number? Give two examples.",
    "How do bees make honey?",
    "Recommend a board game for a family of four.",
    "What does a civil engineer do?",
    "Describe the taste of a lemon to someone who has never had one.",
    "How long should I boil an egg for a soft yolk?",
    "What is the tallest mountain in Africa?",
    "Give me a tip for remembering people's names.",
    "Why is the ocean salty?",
    "Write a short thank-you note to a neighbour who watered my plants.",
    "What is the difference between a virus and a bacterium?",
    "How do I change a flat bicycle tyre?",
    "What are three benefits of regular walking?",
    "Explain what inflation means in simple terms.",
    "Suggest a theme for a child's birthday party.",
    "What is the boiling point of water at sea level in Fahrenheit?",
    "How do airplanes stay in the air?",
    "Write a one-sentence story about a lost umbrella.",
    "What should I consider when adopting a dog?",
    "Translate 'good morning' into Spanish and French.",
    "Why do leaves change colour in the fall?",
    "How do I make a cup of green tea properly?",
    "What is the difference between a lake and a pond?",
    "Write a limerick about a sleepy cat.",
    "How does a compass work?",
    "Give me two ideas for a rainy-day activity with kids.",
    "What is the largest planet in our solar system?",
    "How can I save money on groceries?",
    "Explain what a calorie is.",
    "What are the three states of matter?",
    "Suggest a good first houseplant for a dark room.",
    "Why do we yawn?",
    "Write a short apology for being late to a friend's dinner.",
    "How does recycling paper work?",
    "What is the difference between a mountain and a hill?",
    "How do I clean a cast-iron pan?",
    "Name three famous painters and one work by each.",
    "What is a haiku?",
    "How do vaccines train the immune system?",
    "Give me a quick stretching routine for my desk job.",
    "What does a librarian do besides lending books?",
    "Why does bread go stale?",
    "Write a two-sentence description of a sunrise at sea.",
    "How many continents are there, and which is the smallest?",
    "What is the purpose of a resume cover letter?",
    "How do solar panels make electricity?",
    "Suggest a healthy snack for the afternoon.",
    "What is the difference between a frog and a toad?",
    "How do I politely end a phone call that goes on too long?",
    "Explain what a leap year is.",
    "What makes a good password?",
    "Why do onions make people cry?",
    "Recommend a hobby that costs almost nothing.",
]


def bench_env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def cpu_seconds() -> float:
    """User + system CPU of this process so far, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def reward_model(model_dir: Path):
    """The bench's reward model: the bundled model with a seeded scalar head (identical on every side)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(RM_SEED)
    rm = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    rm.eval()
    return rm


# --- the batch -----------------------------------------------------------------------------------------


def prepare_batch(spec: dict) -> dict:
    """Sample one response per prompt from the bundled model and record its behaviour log-probs."""
    import torch

    from learner.model import chat_prompt_ids, generate, load_lm, load_tokenizer, pack, response_logits
    from learner.ppo import logprobs_of
    from proto.settings import ServiceSettings

    model_dir = ServiceSettings().base_model
    tokenizer, lm = load_tokenizer(model_dir), load_lm(model_dir, trainable=False)
    messages = [[{"role": "user", "content": p}] for p in PROMPTS[: spec["events"]]]
    prompts = [chat_prompt_ids(tokenizer, m) for m in messages]
    torch.manual_seed(spec["seed"])
    responses = generate(lm, prompts, RESPONSE_LENGTH, tokenizer.eos_token_id, greedy=False)
    batch = pack(prompts, responses)
    with torch.no_grad():
        logprobs = logprobs_of(response_logits(lm, batch), batch.responses)  # (B, T), temperature 1
    eos = tokenizer.eos_token_id
    events = [
        {
            "response_id": f"bench-{i:03d}",
            "messages": m,
            "prompt_token_ids": p,
            "response_token_ids": r,
            "response_text": tokenizer.decode(r, skip_special_tokens=True),
            "behaviour_logprobs": logprobs[i, : len(r)].tolist(),
            "finish_reason": "stop" if r[-1] == eos else "length",
        }
        for i, (m, p, r) in enumerate(zip(messages, prompts, responses))
    ]
    return {"model": str(model_dir), "seed": spec["seed"], "temperature": 1.0, "events": events}


def produce_events(batch: dict, prefix: str) -> None:
    """Put the batch on a fresh interactions topic ``<prefix>interactions`` (policy version 0)."""
    from proto import topics, wire
    from proto.events_pb2 import ChatMessage, Interaction, SamplingParams
    from proto.kafka import idempotent_producer
    from proto.settings import KafkaSettings
    from proto.topics import ensure_topics

    kafka = KafkaSettings(topic_prefix=prefix)
    ensure_topics(kafka)
    producer = idempotent_producer(kafka, "bench-ppo")
    for e in batch["events"]:
        event = Interaction(
            response_id=e["response_id"],
            created_at=wire.now(),
            model="smollm2",
            policy_version=0,
            prompt_messages=[ChatMessage(**m) for m in e["messages"]],
            prompt_token_ids=e["prompt_token_ids"],
            response_text=e["response_text"],
            response_token_ids=e["response_token_ids"],
            behaviour_logprobs=e["behaviour_logprobs"],
            sampling=SamplingParams(temperature=1.0, top_p=1.0, max_tokens=RESPONSE_LENGTH),
            finish_reason=e["finish_reason"],
        )
        producer.send(kafka.topic(topics.INTERACTIONS), key=wire.key_of(event), value=wire.encode(event))
    producer.flush()
    producer.close()


def delete_topics(prefix: str) -> None:
    """Best effort: drop a side's topics once it is done."""
    try:
        from kafka.admin import KafkaAdminClient

        from proto.settings import KafkaSettings
        from proto.topics import TOPICS

        kafka = KafkaSettings(topic_prefix=prefix)
        admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, client_id="bench-ppo")
        admin.delete_topics([kafka.topic(t.name) for t in TOPICS])
        admin.close()
    except Exception as e:  # noqa: BLE001 - leftovers are harmless
        print(f"  (could not delete the topics {prefix}*: {e})")


# --- the reward server (parent process) --------------------------------------------------------------


class ScoreServer:
    """``POST /v1/score`` on the bench reward model, in a thread of the parent; counts its own CPU."""

    def __init__(self, model_dir: Path):
        import socket

        import torch
        import uvicorn
        from fastapi import FastAPI
        from transformers.utils import logging as hf_logging

        from learner.model import chat_prompt_ids, load_tokenizer, pack
        from proto.score import ScoreRequest, ScoreResponse

        hf_logging.disable_progress_bar()
        rm, tokenizer = reward_model(model_dir), load_tokenizer(model_dir)
        app = FastAPI()
        self.cpu_s, self.requests, self.items = 0.0, 0, 0
        lock = threading.Lock()

        @app.post("/v1/score")
        def score(body: ScoreRequest) -> ScoreResponse:
            with lock:
                start = time.process_time()  # the parent is otherwise idle: this is the scoring's CPU
                prompts = [chat_prompt_ids(tokenizer, [m.as_turn() for m in i.messages]) for i in body.inputs]
                replies = [
                    tokenizer(i.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                    for i in body.inputs
                ]
                batch = pack(prompts, replies)
                with torch.no_grad():
                    hidden = rm.base_model(
                        input_ids=batch.input_ids,
                        attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids,
                    ).last_hidden_state
                    last = batch.prompt_width + batch.mask.sum(1) - 1  # (B,) each reply's final token
                    scores = rm.score(hidden[torch.arange(len(prompts)), last]).squeeze(-1)
                self.cpu_s += time.process_time() - start
                self.requests += 1
                self.items += len(prompts)
            return ScoreResponse(
                rewards=scores.tolist(),
                reward_model_version=1,
                heldout_balanced_accuracy=0.9,
                heldout_votes=100,
            )

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=self.server.run, daemon=True).start()
        while not self.server.started:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port}"

    def take(self) -> dict:
        """CPU seconds, requests and items scored since the last call."""
        out = {"cpu_s": self.cpu_s, "requests": self.requests, "items": self.items}
        self.cpu_s, self.requests, self.items = 0.0, 0, 0
        return out


# --- the learner sides (subprocess) -------------------------------------------------------------------


class StageClock:
    """Process CPU (``time.process_time``: all threads) of wrapped calls, by stage; a stage call nested in
    another (the gates' scoring) counts for the outer one only. Sub-stages are counted regardless."""

    def __init__(self):
        self.cpu: dict[str, float] = {}
        self.sub: dict[str, float] = {}
        self._depth = 0

    def wrap(self, name: str, fn, sub: bool = False):
        def wrapped(*args, **kwargs):
            if not sub and self._depth:
                return fn(*args, **kwargs)
            start = time.process_time()
            self._depth += not sub
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= not sub
                into = self.sub if sub else self.cpu
                into[name] = into.get(name, 0.0) + time.process_time() - start

        return wrapped


def run_learner(spec: dict) -> dict:
    """Construct the learner (untimed), then iterate until it has consumed the whole batch (timed)."""
    import logging

    import torch

    import learner

    try:
        from learner import service as loop
    except ImportError:  # the old side's commit predates the rename of learner/loop.py
        from learner import loop
    try:
        from learner.settings import Settings as LearnerConfig
    except ImportError:  # the old side's commit predates the rename of learner/config.py
        from learner.config import LearnerConfig
    from proto.settings import KafkaSettings

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if not Path(learner.__file__).resolve().is_relative_to(CODE_DIR.resolve()):
        raise RuntimeError(f"imported {learner.__file__}, not the learner under {CODE_DIR}")
    old = spec["side"].startswith("old")
    n_events = spec["events"]
    kafka = KafkaSettings(topic_prefix=spec["prefix"])
    startup_wall, startup_cpu = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory(prefix=f"bench-ppo-{spec['side']}-") as state:
        settings = {
            "state_dir": Path(state),
            # the old side's commit named the base model init_model
            "init_model" if old else "base_model": Path(spec["model"]),
            "reward_url": spec["reward_url"],
            "metrics_port": 0,
            "group_id": f"bench-ppo-{uuid.uuid4().hex[:8]}",
            "mode": "live",
        }
        if old:
            settings["max_staleness"] = 10**6  # see the module docstring
        if spec["side"].endswith("nogates"):
            settings["publish_every"] = 10**6  # past the run: no gates, no publishing
        cfg = LearnerConfig(**settings)
        lrn = loop.Learner(cfg, kafka)
        startup = {"wall_s": time.perf_counter() - startup_wall, "cpu_s": cpu_seconds() - startup_cpu}

        clock = StageClock()
        lrn.reader.next_batch = clock.wrap("read", lrn.reader.next_batch)
        lrn._rollouts = clock.wrap("experience", lrn._rollouts)
        lrn.reward.score = clock.wrap("score", lrn.reward.score)
        lrn.trainer.step = clock.wrap("update", lrn.trainer.step)
        lrn.trainer.make_experience = clock.wrap("make_experience", lrn.trainer.make_experience, sub=True)
        lrn.trainer.update = clock.wrap("ppo_epochs", lrn.trainer.update, sub=True)
        loop.gates.evaluate = clock.wrap("gates", loop.gates.evaluate)
        loop.checkpoint.save = clock.wrap("checkpoint", loop.checkpoint.save)
        lrn.reader.commit = clock.wrap("checkpoint", lrn.reader.commit)
        lrn.publish = clock.wrap("publish", lrn.publish)

        def counters() -> dict[str, float]:
            if old:
                return {}
            registry = lrn.metrics.registry
            return {
                s: registry.get_sample_value("rlhf_learner_stage_cpu_seconds_total", {"stage": s}) or 0.0
                for s in STAGES
            }

        stop = threading.Event()
        timer = threading.Timer(spec["timeout_s"], stop.set)
        timer.daemon = True
        timer.start()
        iterations, sizes, stats = [], [], []
        before = counters()
        load_start = loadavg()
        wall0, cpu0 = time.perf_counter(), cpu_seconds()
        try:
            while lrn.state.events_consumed < n_events and not stop.is_set():
                w, c, consumed = time.perf_counter(), cpu_seconds(), lrn.state.events_consumed
                result = lrn.iterate(stop)
                if result is None:
                    continue
                iterations.append({"wall_s": time.perf_counter() - w, "cpu_s": cpu_seconds() - c})
                sizes.append(lrn.state.events_consumed - consumed)
                stats.append(result.as_dict())
        finally:
            wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
            load_end = loadavg()
            timer.cancel()
            lrn.close()
        after = counters()
        if lrn.state.events_consumed < n_events:
            raise RuntimeError(f"timed out after {lrn.state.events_consumed} of {n_events} events")
        return {
            "side": spec["side"],
            "responses": lrn.state.events_consumed,
            "dropped": lrn.state.dropped,
            "iterations": len(iterations),
            "batch_sizes": sizes,
            "wall_s": wall,
            "cpu_s": cpu,
            "per_iteration": iterations,
            "stage_cpu_s": {s: after[s] - before.get(s, 0.0) for s in STAGES} if not old else clock.cpu,
            "stage_cpu_s_bench_clock": clock.cpu,
            "substage_cpu_s": clock.sub,
            "stage_source": "bench wrappers (no stage counters in 4d9a3da)"
            if old
            else "rlhf_learner_stage_cpu_seconds_total",
            "startup": startup,
            "loadavg_start": load_start,
            "loadavg_end": load_end,
            "peak_rss_gib": peak_rss_gib(),
            "torch_threads": torch.get_num_threads(),
            "learner_file": learner.__file__,
            "config": json.loads(cfg.model_dump_json()),
            "stats": stats,
        }


# --- TRL (subprocess) ---------------------------------------------------------------------------------


def run_trl(spec: dict) -> dict:
    import torch
    from transformers import TrainerCallback

    from bench.trl_ppo import trl_ppo_trainer, trl_tokenizer  # the trl side runs on this tree (CODE_DIR)

    model_dir = Path(spec["model"])
    startup_wall, startup_cpu = time.perf_counter(), cpu_seconds()
    tokenizer = trl_tokenizer(model_dir)
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        for p in PROMPTS[: spec["events"]]
    ]

    marks: list[tuple[float, float, list[float]]] = []  # (wall, cpu, loadavg) at train begin, each step end

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), cpu_seconds(), loadavg()))

        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), cpu_seconds(), loadavg()))

    with tempfile.TemporaryDirectory() as out:
        trainer = trl_ppo_trainer(
            model_dir,
            tokenizer,
            lambda: reward_model(model_dir),
            prompts,
            prompts,
            output_dir=out,
            batch=TRL_BATCH,
            num_mini_batches=TRL_MINIBATCHES,  # 2 minibatches of 4, each one micro-batch
            epochs=TRL_EPOCHS,
            response_length=RESPONSE_LENGTH,
            episodes=spec["trl_episodes"],
            rollout_batch=TRL_BATCH,
            use_cpu=True,
            callbacks=[Clock()],
            learning_rate=TRL_LR,
        )
        startup = {"wall_s": time.perf_counter() - startup_wall, "cpu_s": cpu_seconds() - startup_cpu}
        trainer.train()
    (w0, c0, l0), (w1, c1, l1) = marks[0], marks[-1]
    iterations = [{"wall_s": b[0] - a[0], "cpu_s": b[1] - a[1]} for a, b in itertools.pairwise(marks)]
    return {
        "side": "trl",
        "responses": TRL_BATCH * len(iterations),
        "iterations": len(iterations),
        "batch_sizes": [TRL_BATCH] * len(iterations),
        "wall_s": w1 - w0,
        "cpu_s": c1 - c0,
        "per_iteration": iterations,
        "startup": startup,
        "loadavg_start": l0,
        "loadavg_end": l1,
        "peak_rss_gib": peak_rss_gib(),
        "torch_threads": torch.get_num_threads(),
        "config": {
            "batch": TRL_BATCH,
            "num_mini_batches": TRL_MINIBATCHES,
            "num_ppo_epochs": TRL_EPOCHS,
            "learning_rate": TRL_LR,
            "response_length": RESPONSE_LENGTH,
        },
    }


# --- the parent -------------------------------------------------------------------------------------


def today_code(commit: str) -> Path:
    """``commit``'s tree, extracted once to /tmp/learner-<commit> (reused when complete)."""
    full = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    target = Path(tempfile.gettempdir()) / f"learner-{commit}"
    marker = target / ".bench-ppo-complete"
    if marker.exists() and marker.read_text().strip() == full:
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", full], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(target)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {commit} failed")
    marker.write_text(full + "\n")
    return target


def subprocess_side(spec: dict, env: dict, log_dir: Path, timeout_s: float) -> dict:
    """Run one side (``spec['side']``) in a subprocess; its RESULT, or an error with the log's tail."""
    log = log_dir / f"{spec['side']}.log"
    with open(log, "w") as err:
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--spec", json.dumps(spec)],
                check=False,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            return {"side": spec["side"], "error": f"killed after {timeout_s:.0f} s", "log": str(log)}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = log.read_text()[-3000:]
        return {"side": spec["side"], "error": tail or proc.stdout[-3000:], "log": str(log)}
    return json.loads(lines[-1][len("RESULT ") :])


def git_info() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        ).stdout

    diff = git("diff", "HEAD", "--", "learner")
    return {
        "head": git("rev-parse", "HEAD").strip(),
        "learner_diff_sha256": hashlib.sha256(diff.encode()).hexdigest(),
        "learner_diff_lines": len(diff.splitlines()),
    }


def fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def report(results: list[dict], meta: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    ok = {r["side"]: r for r in results if "error" not in r and "skipped" not in r}
    table = Table(
        title=f"PPO: responses trained per CPU-second — {meta['events']} live events, "
        f"{os.cpu_count()} CPU cores, float32, {meta['started']}"
    )
    for col in (
        "side",
        "responses (iters)",
        "wall s",
        "CPU s",
        "cores",
        "resp/CPU-s",
        "resp/wall-s",
        "peak RSS GiB",
        "startup wall s",
        "score server CPU s",
        "load 1m start→end",
    ):
        table.add_column(col, justify="left" if col == "side" else "right")
    for r in results:
        label = SIDES.get(r["side"], r["side"])
        if "config" in r and "publish_every" in r["config"] and not r["side"].endswith("nogates"):
            label += f" (publish_every={r['config']['publish_every']})"
        if "skipped" in r or "error" in r:
            why = r.get("skipped") or r["error"].strip().splitlines()[-1][:120]
            table.add_row(label, f"[red]{'skipped' if 'skipped' in r else 'failed'}: {why}[/red]")
            continue
        table.add_row(
            label,
            f"{r['responses']} ({r['iterations']})",
            fmt(r["wall_s"]),
            fmt(r["cpu_s"]),
            fmt(r["cpu_s"] / r["wall_s"], 2),
            fmt(r["responses"] / r["cpu_s"], 4),
            fmt(r["responses"] / r["wall_s"], 4),
            fmt(r["peak_rss_gib"], 2),
            fmt(r["startup"]["wall_s"]),
            fmt(r.get("score_server", {}).get("cpu_s")),
            f"{r['loadavg_start'][0]:.2f}→{r['loadavg_end'][0]:.2f}",
        )
    console.print(table)

    learners = [s for s in ("old", "old-nogates", "new", "new-nogates") if s in ok]
    if learners:
        stages = Table(title="CPU seconds per stage over the timed part (per trained response in brackets)")
        stages.add_column("stage")
        for s in learners:
            source = "counters" if s.startswith("new") else "bench clock"
            stages.add_column(f"{s} ({source})", justify="right")
        for stage in (*STAGES, "  make_experience", "  ppo_epochs", "other"):
            row = [stage]
            for s in learners:
                r = ok[s]
                if stage == "other":
                    v = r["cpu_s"] - sum(r["stage_cpu_s"].get(x, 0.0) for x in STAGES)
                elif stage.startswith("  "):
                    v = r["substage_cpu_s"].get(stage.strip())
                else:
                    v = r["stage_cpu_s"].get(stage)
                row.append("–" if v is None else f"{v:.2f} ({v / r['responses']:.3f})")
            stages.add_row(*row)
        console.print(stages)

    def rate(side: str, exclude: tuple[str, ...] = ()) -> float | None:
        """Responses per CPU-second of ``side``, the ``exclude`` stages' CPU left out."""
        r = ok.get(side)
        if r is None:
            return None
        return r["responses"] / (r["cpu_s"] - sum(r["stage_cpu_s"].get(x, 0.0) for x in exclude))

    lines = []
    gates = ("gates", "publish")
    for label, num, den in (
        ("new / today, responses per CPU-second, gates on", rate("new"), rate("old")),
        ("new / today, gates off (both measured without gates)", rate("new-nogates"), rate("old-nogates")),
        ("new / today, gates+publish stage CPU subtracted", rate("new", gates), rate("old", gates)),
        (
            "new (gates-off run) / today (gates+publish stage CPU subtracted)",
            rate("new-nogates") if "old-nogates" not in ok else None,
            rate("old", gates),
        ),
        ("new / TRL (TRL's CPU also samples and scores)", rate("new"), rate("trl")),
        ("today / TRL", rate("old"), rate("trl")),
    ):
        if num is not None and den is not None:
            lines.append(f"{label}: {num / den:.2f}×")
    if "new" in ok and "old" in ok:
        new, old = (ok[s]["responses"] / ok[s]["wall_s"] for s in ("new", "old"))
        lines.append(f"new / today, responses per wall-second, gates on: {new / old:.2f}×")
    for line in lines:
        console.print(line)
    meta["ratios"] = lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=64, help="live events (a multiple of 8, 8–64)")
    parser.add_argument(
        "--sides",
        default="old,new,new-nogates,trl",
        help=f"comma-separated, in order, from: {', '.join(SIDES)}",
    )
    parser.add_argument("--batch", type=Path, help="reuse a batch file written by an earlier run")
    parser.add_argument("--today", default=TODAY, help="commit of 'today's' learner")
    parser.add_argument("--seed", type=int, default=SAMPLE_SEED, help="seed of the batch's sampling")
    parser.add_argument(
        "--trl-episodes",
        type=int,
        default=TRL_BATCH,
        help="responses TRL samples and trains on (a multiple of 8)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a side may iterate")
    parser.add_argument("--spec", help=argparse.SUPPRESS)  # internal: run one side in this process
    args = parser.parse_args()

    if args.spec:
        spec = json.loads(args.spec)
        if spec["side"] == "prepare":
            result = prepare_batch(spec)
        elif spec["side"] == "trl":
            result = run_trl(spec)
        else:
            result = run_learner(spec)
        print("RESULT " + json.dumps(result), flush=True)
        return

    if args.events % 8 or not 8 <= args.events <= len(PROMPTS):
        parser.error(f"--events must be a multiple of 8 between 8 and {len(PROMPTS)}")
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if unknown := [s for s in sides if s not in SIDES]:
        parser.error(f"unknown side(s) {unknown}; choose from {list(SIDES)}")
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # before torch loads here (the score server)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Imported here, in the parent only: an ``old`` side's subprocess finds the old commit's bench/ first.
    from bench.results import write_json
    from proto.settings import ServiceSettings

    model = ServiceSettings().base_model
    started = datetime.now(UTC)
    stamp = f"{started:%Y%m%dT%H%M%SZ}"
    env = bench_env()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-ppo-logs-"))
    print(f"logs: {log_dir}")

    # 1. the batch, sampled once (or reused), saved
    if args.batch:
        batch = json.loads(args.batch.read_text())
        if len(batch["events"]) < args.events:
            parser.error(f"{args.batch} holds {len(batch['events'])} events, fewer than --events")
        batch["events"] = batch["events"][: args.events]
        batch_path = args.batch
    else:
        print(f"sampling the batch: {args.events} responses of ≤{RESPONSE_LENGTH} tokens ...")
        spec = {"side": "prepare", "events": args.events, "seed": args.seed}
        batch = subprocess_side(spec, env, log_dir, 900)
        if "error" in batch:
            sys.exit(f"preparing the batch failed:\n{batch['error']}")
        batch_path = write_json(f"ppo-{stamp}-batch", batch, indent=None)
    lengths = [len(e["response_token_ids"]) for e in batch["events"]]
    ended = sum(e["finish_reason"] == "stop" for e in batch["events"])
    print(
        f"batch {batch_path}: {len(lengths)} responses, {sum(lengths)} tokens "
        f"(mean {sum(lengths) / len(lengths):.1f}, {ended} ended with EOS)"
    )

    # 2. the sides
    server = ScoreServer(model) if any(s != "trl" for s in sides) else None
    results = []
    for side in sides:
        print(f"[{datetime.now(UTC):%H:%M:%S}] {side} ... (load {loadavg()})")
        spec = {"side": side, "events": args.events, "model": str(model), "timeout_s": args.timeout}
        side_env = dict(env)
        if side == "trl":
            try:
                import trl  # noqa: F401
            except ImportError:
                results.append({"side": side, "skipped": "trl not installed (see the docstring to install)"})
                continue
            spec["trl_episodes"] = args.trl_episodes
        else:
            if side.startswith("old"):
                code = today_code(args.today)
                side_env["BENCH_PPO_CODE_DIR"] = str(code)
                side_env["PYTHONPATH"] = os.pathsep.join([str(code), env.get("PYTHONPATH", "")]).rstrip(
                    os.pathsep
                )
                side_env["RLHF_STATE_DIR"] = str(model.parents[1])
            spec["prefix"] = f"bench-ppo-{side}-{uuid.uuid4().hex[:8]}."
            spec["reward_url"] = server.url
            produce_events(batch, spec["prefix"])
            server.take()
        load_before = loadavg()
        result = subprocess_side(spec, side_env, log_dir, args.timeout + 600)
        result["loadavg_parent_before"] = load_before
        if side != "trl":
            result["score_server"] = server.take()
            delete_topics(spec["prefix"])
        if "error" in result:
            print(f"  {side} failed, log {result.get('log')}:\n{result['error'][-1500:]}")
        else:
            print(
                f"  {side}: {result['responses']} responses in {result['wall_s']:.1f} s wall, "
                f"{result['cpu_s']:.1f} s CPU"
            )
        results.append(result)

    meta = {
        "started": stamp,
        "events": args.events,
        "batch_file": str(batch_path),
        "response_tokens": lengths,
        "today": args.today,
        "git": git_info(),
        "cpu_count": os.cpu_count(),
        "torch_threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "rerun": " ".join([".state/venv/bin/python", *sys.argv]),
    }
    out = write_json(f"ppo-{stamp}", {**meta, "results": results})  # first, whatever report() does
    report(results, meta)
    write_json(f"ppo-{stamp}", {**meta, "results": results})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
