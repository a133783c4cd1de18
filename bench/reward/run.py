"""Benchmark of the reward service on this machine: scoring throughput and training speed.

    python -m bench.reward.run [--seconds 20] [--response-tokens 64]

Scoring goes through the service's own ``Scorer.score`` (what ``POST /v1/score`` runs, without HTTP) at
request batch sizes 1, 8 and 32; training through ``Trainer.step`` on batches of ``train_batch_size``
votes with a Bradley–Terry pair per two votes, as the stream worker builds them. Each measurement runs
one warm-up call, then repeats for at least ``--seconds`` and reports the median and the fastest call.
Prints a table and writes
``bench/results/reward-<timestamp>.json``.
"""

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

# As reward_service/cli.py does: sleep, not spin, in idle OpenMP workers on a shared machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from reward_service.checkpoint import CheckpointStore  # noqa: E402
from reward_service.metrics import RewardMetrics  # noqa: E402
from reward_service.model import ChatEncoder, load_reward_model, load_tokenizer  # noqa: E402
from reward_service.scorer import Scorer  # noqa: E402
from reward_service.service import ensure_initial_checkpoint  # noqa: E402
from reward_service.settings import Settings  # noqa: E402
from reward_service.store import Example, Pair  # noqa: E402
from reward_service.trainer import Trainer  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"
WORDS = "the a model answer is of to and in that it for you can this with be on as are at by".split()
PROMPTS = ["What is the capital of France?", "How do I boil an egg?", "Give me a tip for sleeping better."]


def make_inputs(n: int, response_tokens: int, rng: random.Random) -> list[tuple[list[dict[str, str]], str]]:
    """``n`` chat inputs whose responses are about ``response_tokens`` tokens of plain words."""
    return [
        (
            [{"role": "user", "content": rng.choice(PROMPTS)}],
            " ".join(rng.choices(WORDS, k=response_tokens)) + ".",
        )
        for _ in range(n)
    ]


def repeat(fn, seconds: float) -> dict:
    """Call ``fn`` once to warm up, then until ``seconds`` pass (at least 3 times).

    Returns the number of calls and the median and fastest call, in ms. The machine is shared: the median
    is the typical call beside the neighbours' load, the fastest the closest to what the cores can do.
    """
    fn()
    durations: list[float] = []
    started = time.perf_counter()
    while len(durations) < 3 or time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - t0)
    return {
        "calls": len(durations),
        "median_ms": 1000 * statistics.median(durations),
        "best_ms": 1000 * min(durations),
    }


def bench_scoring(scorer: Scorer, batch: int, seconds: float, response_tokens: int, rng) -> dict:
    """Scoring one request of ``batch`` inputs; rates in sequences per second."""
    inputs = make_inputs(batch, response_tokens, rng)
    tokens = sum(len(scorer.encoder.encode(m, r)) for m, r in inputs) / batch
    timing = repeat(lambda: scorer.score(inputs, source="bench"), seconds)
    return {"kind": "score", "batch": batch, "tokens_per_sequence": tokens, **timing, **rates(timing, batch)}


def bench_training(settings: Settings, seconds: float, response_tokens: int, rng) -> dict:
    """One optimiser step on ``train_batch_size`` votes; rates in training examples (votes) per second."""
    model = load_reward_model(settings.base_model, settings.trainable_layers)
    encoder = ChatEncoder(load_tokenizer(settings.base_model), settings.max_context_tokens)
    trainer = Trainer(
        model, encoder, settings.learning_rate, settings.head_learning_rate, settings.pairwise_weight
    )
    inputs = make_inputs(settings.train_batch_size, response_tokens, rng)
    votes = [Example(f"f{i}", f"r{i}", m, r, up=i % 2 == 0) for i, (m, r) in enumerate(inputs)]
    pairs = [Pair(votes[i], votes[i + 1]) for i in range(0, len(votes) - 1, 2)]
    tokens = sum(len(encoder.encode(v.messages, v.response)) for v in votes) / len(votes)
    timing = repeat(lambda: trainer.step(votes, pairs), seconds)
    return {
        "kind": "train",
        "batch": len(votes),
        "tokens_per_sequence": tokens,
        "pairs_per_step": len(pairs),
        "trainable_layers": settings.trainable_layers,
        **timing,
        **rates(timing, len(votes)),
    }


def rates(timing: dict, items: int) -> dict:
    """Items per second at the median and at the fastest call."""
    return {
        "per_s_median": 1000 * items / timing["median_ms"],
        "per_s_best": 1000 * items / timing["best_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="time per measurement (default 20)")
    parser.add_argument("--response-tokens", type=int, default=64, help="words per response (default 64)")
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as state:
        # A throwaway state dir: the bench writes a v0 checkpoint and must not touch the real one.
        settings = Settings(state_dir=Path(state), base_model=Settings().base_model)
        checkpoints = CheckpointStore(settings.checkpoint_dir)
        ensure_initial_checkpoint(settings, checkpoints)
        scorer = Scorer(settings, checkpoints, RewardMetrics())
        rows = [bench_scoring(scorer, b, args.seconds, args.response_tokens, rng) for b in (1, 8, 32)]
        del scorer  # free its copy of the weights before the trainer loads its own
        rows.append(bench_training(settings, args.seconds, args.response_tokens, rng))

    header = ("what", "batch", "tokens/seq", "median ms", "per s", "best ms", "per s (best)")
    print("{:<7}{:>6}{:>12}{:>11}{:>8}{:>9}{:>14}".format(*header))
    for row in rows:
        unit = "seq" if row["kind"] == "score" else "votes"
        print(
            f"{row['kind']:<7}{row['batch']:>6}{row['tokens_per_sequence']:>12.0f}{row['median_ms']:>11.0f}"
            f"{row['per_s_median']:>8.1f}{row['best_ms']:>9.0f}{row['per_s_best']:>14.1f}  {unit}/s"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    report = {
        "bench": "reward",
        "created_at": stamp,
        "rows": rows,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "settings": {
            "score_micro_batch": settings.score_micro_batch,
            "dtype": "float32",
            "base_model": str(settings.base_model),
            "response_tokens": args.response_tokens,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"reward-{stamp}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
