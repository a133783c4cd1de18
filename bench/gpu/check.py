"""The prepared GPU check: our PPO learner beside TRL's PPOTrainer, and the reward model, on one device.

    bash bench/gpu/check.sh                 # a machine with one GPU and no network (see check.sh)
    bash bench/gpu/check.sh --smoke         # any machine, on the CPU, tiny sizes: does the script run?
    python bench/gpu/check.py --help

Prints four tables, each row as soon as it is measured (so a run cut short still reports), and writes
``bench/results/gpu-<UTC time>.json`` (or under ``--out``):

1. the machine: device, torch/CUDA, transformers, TRL, and which weights were used;
2. PPO iterations, generate mode, 64-token responses sampled at temperature 1 from the bundled model
   (SmolLM2-135M-Instruct), at our default batch (32 responses, minibatches of 8, micro-batches of 4, 2
   epochs) and a larger one (256, 64, 16, 2 epochs):
   - ``ours``: ``learner.model.generate`` (HF ``generate``), the reward service's model scoring in-process
     (the learner calls it over HTTP in production), then ``learner.trainer.PPOTrainer.step`` (top 4
     layers trained over the frozen trunk), float32 and bfloat16 (autocast) rows;
   - ``trl``: TRL's ``trl.experimental.ppo.PPOTrainer`` (1.12.0; gone from TRL 1.13) with the same batch,
     minibatch, epochs, response length and temperature, float32, whole model trained, a separate value
     model and an in-process reward model, all four from the bundled weights. Its micro-batch is its
     minibatch (``per_device_train_batch_size`` = the batch, one gradient-accumulation step). Skipped with
     a note when ``trl`` cannot be imported;
   the first iteration of each row is a warm-up (CUDA kernels, allocator) and not counted;
3. reward-model training (``reward_service.trainer.Trainer.step``, votes on fresh responses, a
   Bradley–Terry pair per two votes), votes per second at 8 and 64 votes per step;
4. reward-model scoring (``reward_service.scorer.Scorer.score``, what ``POST /v1/score`` runs without
   HTTP) of 512 responses at micro-batches of 8 and 64, responses per second.

Time: a budget (``--budget-s``, default 420 s; check.sh kills the script at 470 s) is checked before each
row; rows that would start after it are reported as skipped. Without the bundled weights on the machine
(``--model`` has no ``model.safetensors``) the same architecture is initialised at random from its
``config.json``: the timings are the same (the work does not depend on the weights' values, except that
a random model never ends a response early, so every response has the full 64 tokens), the table says so.
"""

import argparse
import gc
import itertools
import os
import platform
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the services do: shared CPUs sleep, not spin
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network on the GPU machine

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch

from bench.ppo.bench_ppo import PROMPTS
from bench.results import RESULTS, utc_stamp, write_json
from bench.reward.run import make_inputs, make_votes
from learner.model import (
    PolicyWithValueHead,
    ReferenceTop,
    chat_prompt_ids,
    generate,
    load_lm,
    load_tokenizer,
)
from learner.rollout import Rollout
from learner.settings import Settings as LearnerSettings
from learner.trainer import PPOTrainer
from proto.device import autocast
from proto.settings import ServiceSettings
from reward_service.checkpoint import CheckpointStore
from reward_service.metrics import RewardMetrics
from reward_service.model import ChatEncoder, load_reward_model
from reward_service.scorer import Scorer
from reward_service.service import ensure_initial_checkpoint
from reward_service.settings import Settings as RewardSettings
from reward_service.store import Pair
from reward_service.trainer import Trainer

RESPONSE_LENGTH = 64
EPOCHS = 2  # the learner's default ppo_epochs; TRL gets the same
# (batch, minibatch, micro-batch): the learner's defaults, then a batch that fills a GPU better.
PPO_SIZES = [(32, 8, 4), (256, 64, 16)]
REWARD_TRAIN = [8, 64]
REWARD_SCORE = [8, 64]
SMOKE = {
    "ppo_sizes": [(4, 2, 2)],
    "response_length": 8,
    "iterations": 1,
    "warmup": 0,
    "reward_train": [4],
    "reward_steps": 2,
    "reward_score": [4],
    "score_responses": 8,
}


class Budget:
    """Wall-clock budget of the whole run; ``ok(name)`` is False (and says so) once it is spent."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.monotonic(), seconds

    def ok(self) -> bool:
        return time.monotonic() - self.start < self.seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """Peak memory of the measurement: GPU memory allocated, or on the CPU the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def model_dir(requested: Path, scratch: Path) -> tuple[Path, str]:
    """``requested`` if it holds weights; else a copy of its config and tokenizer with random weights."""
    if (requested / "model.safetensors").exists():
        return requested, f"bundled weights ({requested})"
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = scratch / "random-model"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(requested)).save_pretrained(out)
    AutoTokenizer.from_pretrained(requested).save_pretrained(out)
    return out, f"RANDOM weights, architecture of {requested} (no model.safetensors there): timing only"


def prompts_for(tokenizer, n: int) -> tuple[list[list[dict[str, str]]], list[list[int]]]:
    messages = [[{"role": "user", "content": p}] for p in itertools.islice(itertools.cycle(PROMPTS), n)]
    return messages, [chat_prompt_ids(tokenizer, m) for m in messages]


# --- PPO ----------------------------------------------------------------------------------------------


def ppo_ours(
    model: Path, device, dtype: str, size, iterations: int, warmup: int, length: int, scratch
) -> dict:
    """Generate-mode iterations of our learner: sample, score in-process, ``PPOTrainer.step``."""
    batch, minibatch, micro = size
    cfg = LearnerSettings(
        state_dir=scratch / "learner",
        base_model=model,
        device=device.type,
        dtype=dtype,
        batch_size=batch,
        min_batch_size=batch,
        minibatch_size=minibatch,
        micro_batch_size=micro,
        ppo_epochs=EPOCHS,
        response_length=length,
    )
    tokenizer = load_tokenizer(model)
    policy = PolicyWithValueHead(load_lm(model, trainable=False, device=device), cfg.trainable_layers)
    trainer = PPOTrainer(cfg, policy, ReferenceTop(policy.lm, policy))  # v0's top, before training
    scorer = reward_scorer(model, device, dtype, scratch / f"reward-{dtype}", micro_batch=min(batch, 64))
    messages, prompt_ids = prompts_for(tokenizer, batch)
    times, lengths = [], []
    for it in range(warmup + iterations):
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, dtype):
            responses = generate(policy.lm, prompt_ids, length, tokenizer.eos_token_id, greedy=False)
        sync(device)
        t1 = time.perf_counter()
        texts = [tokenizer.decode(r, skip_special_tokens=True) for r in responses]
        finish = ["stop" if r[-1] == tokenizer.eos_token_id else "length" for r in responses]
        scored = scorer.score(list(zip(messages, texts, finish)), source="bench")
        t2 = time.perf_counter()
        rollouts = [
            Rollout(f"r{it}-{i}", m, p, r, t, 0, f)
            for i, (m, p, r, t, f) in enumerate(zip(messages, prompt_ids, responses, texts, finish))
        ]
        trainer.step(rollouts, scored.rewards, scored.version, it)
        sync(device)
        t3 = time.perf_counter()
        if it >= warmup:
            times.append((t1 - t0, t2 - t1, t3 - t2))
            lengths += [len(r) for r in responses]
    gen, score, update = (sum(x[k] for x in times) / len(times) for k in range(3))
    total = gen + score + update
    return {
        "side": "ours",
        "dtype": dtype,
        "batch": batch,
        "minibatch": minibatch,
        "micro": micro,
        "iterations": len(times),
        "s_per_iteration": total,
        "generate_s": gen,
        "score_s": score,
        "update_s": update,
        "responses_per_s": batch / total,
        "mean_response_tokens": sum(lengths) / len(lengths),
        "peak_gib": peak_gib(device),
    }


def ppo_trl(model: Path, device, size, iterations: int, warmup: int, length: int, scratch) -> dict:
    """TRL's PPOTrainer on the same prompts and sizes, float32; timed from step end to step end."""
    from transformers import AutoModelForSequenceClassification, TrainerCallback

    from bench.trl_ppo import trl_ppo_trainer, trl_tokenizer

    batch, minibatch, _ = size
    tokenizer = trl_tokenizer(model)
    episodes = batch * (warmup + iterations)
    _, prompt_ids = prompts_for(tokenizer, episodes)

    def scalar_model():
        torch.manual_seed(1234)  # the same seeded head for value and reward model, every run
        return AutoModelForSequenceClassification.from_pretrained(model, num_labels=1, dtype=torch.float32)

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            sync(device)
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            marks.append(time.perf_counter())

    trainer = trl_ppo_trainer(
        model,
        tokenizer,
        scalar_model,
        prompt_ids,
        prompt_ids[:batch],
        output_dir=str(scratch / "trl"),
        batch=batch,
        num_mini_batches=batch // minibatch,
        epochs=EPOCHS,
        response_length=length,
        episodes=episodes,
        rollout_batch=min(batch, 64),
        use_cpu=device.type == "cpu",
        callbacks=[Clock()],
    )
    trainer.train()
    steps = [b - a for a, b in itertools.pairwise(marks)][warmup:]
    per_iteration = sum(steps) / len(steps)
    del trainer
    return {
        "side": "trl",
        "dtype": "float32",
        "batch": batch,
        "minibatch": minibatch,
        "micro": minibatch,
        "iterations": len(steps),
        "s_per_iteration": per_iteration,
        "generate_s": None,
        "score_s": None,
        "update_s": None,
        "responses_per_s": batch / per_iteration,
        "mean_response_tokens": None,
        "peak_gib": peak_gib(device),
    }


# --- reward model ----------------------------------------------------------------------------------------


def reward_scorer(model: Path, device, dtype: str, state: Path, micro_batch: int) -> Scorer:
    """The reward service's scorer over a fresh version 0 of the reward model (zero head) on ``device``."""
    settings = RewardSettings(
        state_dir=state, base_model=model, device=device.type, dtype=dtype, score_micro_batch=micro_batch
    )
    checkpoints = CheckpointStore(settings.checkpoint_dir)
    ensure_initial_checkpoint(settings, checkpoints)
    return Scorer(settings, checkpoints, RewardMetrics())


def reward_training(model: Path, device, dtype: str, votes_per_step: int, steps: int) -> dict:
    settings = RewardSettings(base_model=model, device=device.type, dtype=dtype)
    encoder = ChatEncoder(load_tokenizer(model), settings.max_context_tokens)
    trainer = Trainer(
        load_reward_model(model, settings.trainable_layers, device=device),
        encoder,
        settings.learning_rate,
        settings.head_learning_rate,
        settings.pairwise_weight,
        micro_batch_tokens=settings.train_micro_batch_tokens,  # the service's setting, as configured
        trunk_cache_bytes=0,  # every vote is on a new response, as in the stream
        dtype=dtype,
    )
    rng = random.Random(0)
    timed = []
    for step in range(steps + 1):  # the first step warms up
        votes = make_votes(votes_per_step, RESPONSE_LENGTH, rng, f"s{step}-")
        pairs = [Pair(votes[i], votes[i + 1]) for i in range(0, len(votes) - 1, 2)]
        sync(device)
        t0 = time.perf_counter()
        trainer.step(votes, pairs)
        sync(device)
        if step:
            timed.append(time.perf_counter() - t0)
    per_step = sum(timed) / len(timed)
    return {
        "kind": "train",
        "dtype": dtype,
        "votes_per_step": votes_per_step,
        "steps": len(timed),
        "ms_per_step": 1000 * per_step,
        "votes_per_s": votes_per_step / per_step,
        "peak_gib": peak_gib(device),
    }


def reward_scoring(model: Path, device, dtype: str, micro_batch: int, responses: int, scratch: Path) -> dict:
    scorer = reward_scorer(model, device, dtype, scratch / f"score-{dtype}-{micro_batch}", micro_batch)
    inputs = make_inputs(responses, RESPONSE_LENGTH, random.Random(1))
    scorer.score(inputs[:micro_batch], source="bench")  # warm-up
    sync(device)
    t0 = time.perf_counter()
    scorer.score(inputs, source="bench")
    sync(device)
    seconds = time.perf_counter() - t0
    return {
        "kind": "score",
        "dtype": dtype,
        "micro_batch": micro_batch,
        "responses": responses,
        "seconds": seconds,
        "responses_per_s": responses / seconds,
        "peak_gib": peak_gib(device),
    }


# --- report ------------------------------------------------------------------------------------------


COLUMNS = {
    "ppo": [
        ("side", "side"),
        ("dtype", "dtype"),
        ("batch", "batch"),
        ("minibatch", "minibatch"),
        ("micro", "micro"),
        ("iterations", "iters"),
        ("s_per_iteration", "s/iter"),
        ("generate_s", "generate s"),
        ("score_s", "score s"),
        ("update_s", "update s"),
        ("responses_per_s", "responses/s"),
        ("mean_response_tokens", "tokens/resp"),
        ("peak_gib", "peak GiB"),
    ],
    "reward_train": [
        ("dtype", "dtype"),
        ("votes_per_step", "votes/step"),
        ("steps", "steps"),
        ("ms_per_step", "ms/step"),
        ("votes_per_s", "votes/s"),
        ("peak_gib", "peak GiB"),
    ],
    "reward_score": [
        ("dtype", "dtype"),
        ("micro_batch", "micro-batch"),
        ("responses", "responses"),
        ("seconds", "s"),
        ("responses_per_s", "responses/s"),
        ("peak_gib", "peak GiB"),
    ],
}


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def print_table(title: str, kind: str, rows: list[dict]) -> None:
    cols = COLUMNS[kind]
    print(f"\n## {title}\n")
    print("| " + " | ".join(h for _, h in cols) + " | note |")
    print("|" + "---|" * (len(cols) + 1))
    for row in rows:
        if "skipped" in row:
            print("| " + " | ".join(fmt(row.get(k)) for k, _ in cols) + f" | skipped: {row['skipped']} |")
        else:
            print("| " + " | ".join(fmt(row.get(k)) for k, _ in cols) + " | |")
    sys.stdout.flush()


def machine(device: torch.device, weights: str) -> dict:
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except Exception as exc:  # noqa: BLE001 - any import failure means the TRL rows are skipped
        trl_version = f"absent ({type(exc).__name__}: {exc})"
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "transformers": transformers.__version__,
        "trl": trl_version,
        "weights": weights,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: check that the script runs")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --smoke")
    parser.add_argument(
        "--model",
        type=Path,
        default=ServiceSettings().base_model,
        help="HF model directory (weights optional: without them, random weights of its architecture)",
    )
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no row after this many seconds")
    parser.add_argument("--iterations", type=int, default=3, help="timed PPO iterations per row")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available here: run with --smoke (CPU) or on the GPU machine")
    sizes = SMOKE["ppo_sizes"] if args.smoke else PPO_SIZES
    length = SMOKE["response_length"] if args.smoke else RESPONSE_LENGTH
    iterations = SMOKE["iterations"] if args.smoke else args.iterations
    warmup = SMOKE["warmup"] if args.smoke else 1
    budget = Budget(args.budget_s)
    results: dict = {"smoke": args.smoke, "ppo": [], "reward_train": [], "reward_score": []}

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        model, weights = model_dir(args.model, scratch)
        results["machine"] = machine(device, weights)
        print("## Machine\n")
        for key, value in results["machine"].items():
            print(f"- {key}: {value}")
        try:
            import trl  # noqa: F401

            trl_note = None
        except Exception as exc:  # noqa: BLE001
            trl_note = f"trl cannot be imported ({type(exc).__name__})"
        if args.skip_trl:
            trl_note = "--skip-trl"

        # In order of importance, so a tight budget drops the least important rows.
        plan = []
        for size in sizes:
            plan.append(("ppo", "ours", "float32", size))
            plan.append(("ppo", "trl", "float32", size))
            if size == sizes[0]:
                plan += [("reward_train", n, "float32", None) for n in SMOKE["reward_train"] if args.smoke]
                plan += [("reward_train", n, d, None) for d in ("float32", "bfloat16") for n in REWARD_TRAIN
                         if not args.smoke]  # fmt: skip
                plan += [("reward_score", n, "float32", None) for n in SMOKE["reward_score"] if args.smoke]
                plan += [("reward_score", n, d, None) for d in ("float32", "bfloat16") for n in REWARD_SCORE
                         if not args.smoke]  # fmt: skip
            plan.append(("ppo", "ours", "bfloat16", size))

        titles = {
            "ppo": "PPO iterations",
            "reward_train": "Reward model: training",
            "reward_score": "Reward model: scoring",
        }
        for kind, what, dtype, size in plan:
            reset_peak(device)
            label = {"kind": kind, "dtype": dtype}
            if kind == "ppo":
                label |= {"side": what, "batch": size[0], "minibatch": size[1], "micro": size[2]}
            elif kind == "reward_train":
                label |= {"votes_per_step": what}
            else:
                label |= {"micro_batch": what}
            if not budget.ok():
                row = label | {"skipped": f"time budget of {args.budget_s:.0f} s spent"}
            elif kind == "ppo" and what == "trl" and trl_note:
                row = label | {"skipped": trl_note}
            else:
                try:
                    if kind == "ppo" and what == "ours":
                        row = ppo_ours(model, device, dtype, size, iterations, warmup, length, scratch)
                    elif kind == "ppo":
                        row = ppo_trl(model, device, size, iterations, warmup, length, scratch)
                    elif kind == "reward_train":
                        steps = SMOKE["reward_steps"] if args.smoke else 10
                        row = reward_training(model, device, dtype, what, steps)
                    else:
                        n = SMOKE["score_responses"] if args.smoke else 512
                        row = reward_scoring(model, device, dtype, what, n, scratch)
                except torch.OutOfMemoryError as exc:
                    row = label | {"skipped": f"out of memory: {str(exc).splitlines()[0]}"}
            results[kind].append(row)
            print_table(titles[kind], kind, [row])  # as it comes, in case the run is cut short

        print("\n# Summary")
        for kind, title in titles.items():
            print_table(title, kind, results[kind])
        results["seconds"] = time.monotonic() - budget.start
        print(f"\nwhole run: {results['seconds']:.0f} s")
    path = write_json(f"gpu-{'smoke-' if args.smoke else ''}{utc_stamp('%Y%m%dT%H%M%SZ')}", results, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
