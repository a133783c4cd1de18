"""PPO iteration time and samples/s: our learner and TRL's PPOTrainer side by side, in one run.

Both sides use the same model (the bundled SmolLM2-135M-Instruct, float32), batch size (8 responses per
iteration), response length (64 new tokens, sampled at temperature 1 without top-k/top-p), 1 PPO epoch of
1 minibatch, learning rate, prompts, and reward model: a scalar head on the bundled model
(``AutoModelForSequenceClassification``, head initialised from the same seed), on this machine's CPU.

- TRL: ``trl.experimental.ppo.PPOTrainer`` from ``trl==1.12.0`` (the last release that has it; it is gone
  from 1.13). It is NOT a project dependency: install it into the venv for this bench only, with torch and
  transformers held where they are:
      .state/venv/bin/pip install trl==1.12.0 \\
          --constraint <(printf 'torch==2.13.0\\ntransformers==5.19.0\\naccelerate==1.15.0\\n')
  TRL builds attention masks from pad ids, so its tokenizer gets a distinct pad token (<|endoftext|>, id 0)
  and left padding; the reward model runs in-process (TRL's ``get_reward``).
- Ours: the learner service itself (``learner.loop.Learner``) in generate mode: prompts read from a Kafka
  interactions topic, responses sampled by the policy, scored over HTTP by a ``/v1/score`` server (in a
  thread) wrapping the same reward model, one PPO iteration, then the checkpoint (policy, value head,
  optimizer, offsets; ~1.6 GB) and the offset commit: everything a production iteration does except the
  promotion gates (``publish_every`` is set past the run). The checkpoint's own time is reported apart.
  Differences by design: our value head shares the policy's trunk (TRL: a separate value model, one more
  forward/backward per step); our KL coefficient adapts (TRL: fixed); TRL does not checkpoint here.

Each side runs in its own subprocess (its peak RSS is its own), ``--warmup`` iterations first, then
``--iterations`` timed ones. Needs the Kafka broker (``./rlhf kafka start``). Prints a table and writes
``bench/results/ppo-<UTC time>.json``.

    .state/venv/bin/python bench/ppo/bench_ppo.py [--iterations 3] [--warmup 1]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

BATCH, RESPONSE_LENGTH, LEARNING_RATE, RM_SEED = 8, 64, 3e-6, 1234
PROMPTS = [
    "Give me three tips for sleeping better.",
    "Explain in two sentences why the sky is blue.",
    "Write a short, friendly reply declining a meeting invitation.",
    "What is a good way to start learning to cook?",
    "Summarise what photosynthesis does in one sentence.",
    "Suggest a name for a small bakery.",
    "How do I keep a houseplant alive?",
    "What should I pack for a weekend hiking trip?",
]


def reward_model(model_dir: Path):
    """The bench's reward model: the bundled model with a seeded scalar head (identical in both runs)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(RM_SEED)
    rm = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    rm.eval()
    return rm


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_trl(warmup: int, iterations: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from learner.config import bundled_model

    model_dir = bundled_model()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    tokenizer.pad_token = "<|endoftext|>"  # TRL masks by pad id; <|im_end|> must stay visible
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        for p in PROMPTS
    ]
    dataset = Dataset.from_dict({"input_ids": prompts})
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    value = reward_model(model_dir)
    rm = reward_model(model_dir)

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        config = PPOConfig(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=1,
            num_mini_batches=1,
            num_ppo_epochs=1,
            response_length=RESPONSE_LENGTH,
            temperature=1.0,
            stop_token="eos",
            total_episodes=BATCH * (warmup + iterations),
            learning_rate=LEARNING_RATE,
            local_rollout_forward_batch_size=BATCH,
            num_sample_generations=0,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            bf16=False,
            seed=0,
            disable_tqdm=True,
            logging_steps=1,
        )
        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=ref,
            reward_model=rm,
            train_dataset=dataset,
            value_model=value,
            eval_dataset=dataset,
            callbacks=[Clock()],
        )
        trainer.train()
    times = [b - a for a, b in zip(stamps, stamps[1:])]
    return {
        "side": "TRL 1.12.0 PPOTrainer",
        "iteration_s": times,
        "timed": times[warmup:],
        "peak_rss_gib": peak_rss_gib(),
    }


def serve_rewards(model_dir: Path) -> str:
    """Serve the bench reward model on ``/v1/score`` (reward_service's contract) in a thread; its URL."""
    import socket

    import torch
    import uvicorn
    from fastapi import FastAPI

    from learner.model import chat_prompt_ids, load_tokenizer, pack

    rm, tokenizer = reward_model(model_dir), load_tokenizer(model_dir)
    app = FastAPI()

    @app.post("/v1/score")
    def score(body: dict) -> dict:
        prompts = [chat_prompt_ids(tokenizer, i["messages"]) for i in body["inputs"]]
        replies = [
            tokenizer(i["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for i in body["inputs"]
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
        return {"rewards": scores.tolist(), "reward_model_version": 0}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}"


def run_ours(warmup: int, iterations: int) -> dict:
    from kafka import KafkaProducer

    from learner import checkpoint, loop
    from learner.config import LearnerConfig, bundled_model
    from learner.model import chat_prompt_ids, load_tokenizer
    from proto import topics, wire
    from proto.events_pb2 import ChatMessage, Interaction
    from proto.topics import KafkaSettings, ensure_topics

    model_dir = bundled_model()
    kafka = KafkaSettings(topic_prefix=f"bench-ppo-{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka)
    tokenizer = load_tokenizer(model_dir)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    for i in range(BATCH * (warmup + iterations)):
        text = PROMPTS[i % len(PROMPTS)]
        messages = [{"role": "user", "content": text}]
        event = Interaction(
            response_id=f"bench-{i}",
            created_at=wire.now(),
            prompt_messages=[ChatMessage(**messages[0])],
            prompt_token_ids=chat_prompt_ids(tokenizer, messages),
        )
        producer.send(kafka.topic(topics.INTERACTIONS), key=wire.key_of(event), value=wire.encode(event))
    producer.flush()
    producer.close()

    saves: list[float] = []
    timed_save = checkpoint.save

    def save(*args, **kwargs):
        start = time.perf_counter()
        try:
            return timed_save(*args, **kwargs)
        finally:
            saves.append(time.perf_counter() - start)

    loop.checkpoint.save = save
    with tempfile.TemporaryDirectory() as state:
        prompts = Path(state) / "gate.jsonl"  # the gates never run; one short prompt keeps startup short
        prompts.write_text('{"messages": [{"role": "user", "content": "Say hello."}]}\n')
        cfg = LearnerConfig(
            state_dir=Path(state),
            reward_url=serve_rewards(model_dir),
            metrics_port=0,
            mode="generate",
            batch_size=BATCH,
            num_minibatches=1,
            ppo_epochs=1,
            response_length=RESPONSE_LENGTH,
            learning_rate=LEARNING_RATE,
            publish_every=10**6,
            keep_checkpoints=1,
            heldout_prompts=prompts,
            canary_prompts=prompts,
            gate_max_new_tokens=8,
        )
        learner = loop.Learner(cfg, kafka)
        times, stats = [], []
        try:
            for _ in range(warmup + iterations):
                start = time.perf_counter()
                stats.append(learner.iterate(threading.Event()).as_dict())
                times.append(time.perf_counter() - start)
        finally:
            learner.close()
    return {
        "side": "ours (learner.loop, generate mode)",
        "iteration_s": times,
        "timed": times[warmup:],
        "checkpoint_s": saves,
        "peak_rss_gib": peak_rss_gib(),
        "stats": stats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--side", choices=["ours", "trl"], help="run one side in this process (internal)")
    args = parser.parse_args()
    if args.side:
        result = (run_ours if args.side == "ours" else run_trl)(args.warmup, args.iterations)
        print("RESULT " + json.dumps(result))
        return

    env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    results = []
    for side in ("ours", "trl"):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--side",
                side,
                "--iterations",
                str(args.iterations),
                "--warmup",
                str(args.warmup),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            results.append({"side": side, "error": (proc.stderr or proc.stdout)[-3000:]})
            continue
        results.append(json.loads(lines[-1][len("RESULT ") :]))

    print(
        f"\nbatch {BATCH}, {RESPONSE_LENGTH}-token responses, 1 PPO epoch, float32, "
        f"{os.cpu_count()} CPU cores, {args.warmup} warm-up + {args.iterations} timed iterations\n"
    )
    print(f"{'side':<36} {'s/iteration (mean ± sd)':>24} {'samples/s':>10} {'peak RSS GiB':>13}")
    for r in results:
        if "error" in r:
            print(f"{r['side']:<36} failed: {r['error'].strip().splitlines()[-1]}")
            continue
        mean = statistics.mean(r["timed"])
        sd = statistics.stdev(r["timed"]) if len(r["timed"]) > 1 else 0.0
        print(f"{r['side']:<36} {mean:>16.1f} ± {sd:<5.1f} {BATCH / mean:>10.3f} {r['peak_rss_gib']:>13.1f}")
        if "checkpoint_s" in r:
            print(f"{'  of which checkpoint save':<36} {statistics.mean(r['checkpoint_s']):>16.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"ppo-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(
        json.dumps(
            {
                "batch": BATCH,
                "response_length": RESPONSE_LENGTH,
                "ppo_epochs": 1,
                "learning_rate": LEARNING_RATE,
                "warmup": args.warmup,
                "results": results,
            },
            indent=1,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
