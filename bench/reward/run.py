"""Benchmark of the reward service on this machine: scoring, training and held-out evaluation.

    python -m bench.reward.run [--seconds 10] [--response-tokens 64] [--threads N] [--only train,evaluate]

Scoring goes through the service's own ``Scorer.score`` (what ``POST /v1/score`` runs, without HTTP) at
request batch sizes 1, 8 and 32; training through ``Trainer.step`` on batches of 1, 8 and 32 votes (and
``train_batch_size``) with a Bradley–Terry pair per two votes, as the stream worker builds them; evaluation
through ``Trainer.evaluate`` on ``heldout_eval_size`` votes, once with the frozen trunk's outputs to
compute (``cold``: a new held-out vote, or the first evaluation after a start) and once cached (``warm``:
every later checkpoint). Each measurement runs one warm-up call (none for ``cold``), then repeats for at
least ``--seconds`` and reports the median and fastest wall time and the median process CPU time per call
(all threads: on a shared machine the CPU time is the steadier measure of the work). Prints a table and
writes ``bench/results/reward-<timestamp>.json``.
"""

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

# As reward_service/cli.py does: sleep, not spin, in idle OpenMP workers on a shared machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from bench.results import utc_stamp, write_json  # noqa: E402
from reward_service.checkpoint import CheckpointStore  # noqa: E402
from reward_service.metrics import RewardMetrics  # noqa: E402
from reward_service.model import ChatEncoder, load_reward_model, load_tokenizer  # noqa: E402
from reward_service.scorer import Scorer  # noqa: E402
from reward_service.service import ensure_initial_checkpoint  # noqa: E402
from reward_service.settings import Settings  # noqa: E402
from reward_service.store import Example, Pair  # noqa: E402
from reward_service.trainer import Trainer  # noqa: E402

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


def repeat(fn, seconds: float, warm_up: bool = True, least: int = 3) -> dict:
    """Call ``fn`` once to warm up, then until ``seconds`` pass (at least ``least`` times).

    Returns the number of calls, the median and fastest call in ms, and the median process CPU time per
    call in ms. The machine is shared: the median is the typical call beside the neighbours' load, the
    fastest the closest to what the cores can do, the CPU time the work whatever the neighbours do.
    """
    if warm_up:
        fn()
    durations: list[float] = []
    cpu: list[float] = []
    started = time.perf_counter()
    while len(durations) < least or time.perf_counter() - started < seconds:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        durations.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "calls": len(durations),
        "median_ms": 1000 * statistics.median(durations),
        "best_ms": 1000 * min(durations),
        "cpu_ms": 1000 * statistics.median(cpu),
    }


def bench_scoring(scorer: Scorer, batch: int, seconds: float, response_tokens: int, rng) -> dict:
    """Scoring one request of ``batch`` inputs; rates in sequences per second."""
    inputs = make_inputs(batch, response_tokens, rng)
    tokens = sum(len(scorer.encoder.encode(m, r)) for m, r in inputs) / batch
    timing = repeat(lambda: scorer.score(inputs, source="bench"), seconds)
    return {"kind": "score", "batch": batch, "tokens_per_sequence": tokens, **timing, **rates(timing, batch)}


def make_trainer(settings: Settings) -> Trainer:
    """A trainer as the stream worker builds it (fresh weights: v0)."""
    model = load_reward_model(settings.base_model, settings.trainable_layers)
    encoder = ChatEncoder(load_tokenizer(settings.base_model), settings.max_context_tokens)
    return Trainer(
        model,
        encoder,
        settings.learning_rate,
        settings.head_learning_rate,
        settings.pairwise_weight,
        micro_batch_tokens=settings.train_micro_batch_tokens,
        trunk_cache_bytes=settings.trunk_cache_mb << 20,
    )


def make_votes(n: int, response_tokens: int, rng, tag: str) -> list[Example]:
    """``n`` votes on distinct new responses, alternately up and down."""
    inputs = make_inputs(n, response_tokens, rng)
    return [Example(f"f{tag}{i}", f"r{tag}{i}", m, r, up=i % 2 == 0) for i, (m, r) in enumerate(inputs)]


def bench_training(trainer: Trainer, batch: int, seconds: float, response_tokens: int, rng) -> dict:
    """One optimiser step on ``batch`` votes on new responses (their trunk outputs not cached yet, as in
    the stream), a pair per two votes; rates in votes per second."""
    batches = iter(lambda: make_votes(batch, response_tokens, rng, f"t{rng.getrandbits(32)}-"), None)

    def step() -> None:
        votes = next(batches)
        pairs = [Pair(votes[i], votes[i + 1]) for i in range(0, len(votes) - 1, 2)]
        trainer.step(votes, pairs)

    sample = make_votes(batch, response_tokens, rng, "sample")
    tokens = sum(len(trainer.encoder.encode(v.messages, v.response)) for v in sample) / batch
    timing = repeat(step, seconds)
    return {
        "kind": "train",
        "batch": batch,
        "tokens_per_sequence": tokens,
        "pairs_per_step": batch // 2,
        **timing,
        **rates(timing, batch),
    }


def bench_evaluation(trainer: Trainer, size: int, seconds: float, response_tokens: int, rng) -> list[dict]:
    """``Trainer.evaluate`` on ``size`` held-out votes: cold (trunk outputs computed), then warm (cached)."""
    heldout = make_votes(size, response_tokens, rng, "h")
    tokens = sum(len(trainer.encoder.encode(v.messages, v.response)) for v in heldout) / size
    cold = repeat(lambda: trainer.evaluate(heldout), 0, warm_up=False, least=1)
    warm = repeat(lambda: trainer.evaluate(heldout), seconds, warm_up=False)
    return [
        {"kind": f"eval-{name}", "batch": size, "tokens_per_sequence": tokens, **t, **rates(t, size)}
        for name, t in (("cold", cold), ("warm", warm))
    ]


def rates(timing: dict, items: int) -> dict:
    """Items per second at the median and at the fastest call."""
    return {
        "per_s_median": 1000 * items / timing["median_ms"],
        "per_s_best": 1000 * items / timing["best_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="time per measurement (default 10)")
    parser.add_argument("--response-tokens", type=int, default=64, help="words per response (default 64)")
    parser.add_argument(
        "--threads",
        type=int,
        default=Settings().torch_threads,
        help="torch.set_num_threads; 0: torch's default (default: the service's torch_threads, 1)",
    )
    parser.add_argument(
        "--only", default="score,train,evaluate", help="comma-separated parts (default: all three)"
    )
    args = parser.parse_args()
    parts = set(args.only.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = random.Random(0)
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as state:
        # A throwaway state dir: the bench writes a v0 checkpoint and must not touch the real one.
        settings = Settings(state_dir=Path(state), base_model=Settings().base_model)
        if "score" in parts:
            checkpoints = CheckpointStore(settings.checkpoint_dir)
            ensure_initial_checkpoint(settings, checkpoints)
            scorer = Scorer(settings, checkpoints, RewardMetrics())
            rows += [bench_scoring(scorer, b, args.seconds, args.response_tokens, rng) for b in (1, 8, 32)]
            del scorer  # free its copy of the weights before the trainer loads its own
        trainer = make_trainer(settings) if parts & {"train", "evaluate"} else None
        if "train" in parts:
            for batch in sorted({1, 8, 32, settings.train_batch_size}):
                rows.append(bench_training(trainer, batch, args.seconds, args.response_tokens, rng))
        if "evaluate" in parts:
            rows += bench_evaluation(
                trainer, settings.heldout_eval_size, args.seconds, args.response_tokens, rng
            )

    header = ("what", "batch", "tokens/seq", "median ms", "per s", "best ms", "per s (best)", "cpu ms")
    print("{:<10}{:>6}{:>12}{:>11}{:>8}{:>9}{:>14}{:>9}".format(*header))
    for row in rows:
        unit = "votes" if row["kind"] == "train" else "seq"
        print(
            f"{row['kind']:<10}{row['batch']:>6}{row['tokens_per_sequence']:>12.0f}{row['median_ms']:>11.0f}"
            f"{row['per_s_median']:>8.1f}{row['best_ms']:>9.0f}{row['per_s_best']:>14.1f}"
            f"{row['cpu_ms']:>9.0f}  {unit}/s"
        )
    print(
        f"load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
        f"torch threads {torch.get_num_threads()}"
    )
    stamp = utc_stamp()
    report = {
        "bench": "reward",
        "created_at": stamp,
        "rows": rows,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "load_avg_1m_before": load_before,
            "load_avg_1m": os.getloadavg()[0],
        },
        "settings": {
            "score_micro_batch": settings.score_micro_batch,
            "train_micro_batch_tokens": settings.train_micro_batch_tokens,
            "trainable_layers": settings.trainable_layers,
            "heldout_eval_size": settings.heldout_eval_size,
            "dtype": "float32",
            "base_model": str(settings.base_model),
            "response_tokens": args.response_tokens,
        },
    }
    out = write_json(f"reward-{stamp}", report)
    print(f"written {out}")


if __name__ == "__main__":
    main()
