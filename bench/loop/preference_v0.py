"""Where version 0 sits under each hidden preference: the mean thumbs-up probability of real served answers.

Starts serving with the bundled model (fresh topics, its own data dir), asks ``--n`` prompts from
loop/prompts.txt at temperature 1 for each ``--max-tokens`` budget (tokens) and prints, per budget, the mean
``p_up`` of every preference in loop/preference.py, the mean words and the share of answers that stopped by
themselves. The answers are saved as JSON, and ``--answers FILE`` re-scores saved answers without serving
(to tune a preference offline):

    .state/venv/bin/python -m bench.loop.preference_v0 [--n 60] [--max-tokens 64 128] [--answers FILE]

Needs the broker of ``./rlhf kafka start``.
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from openai import AsyncOpenAI

from bench.results import utc_stamp, write_json
from loop.preference import PREFERENCES, distinct_trigram_ratio
from loop.processes import Service, free_port
from loop.report import wilson
from loop.users import load_prompts
from proto.settings import KafkaSettings, ServiceSettings
from proto.topics import ensure_topics

MODEL = "smollm2-135m-instruct"


async def ask(url: str, prompts: list[str], max_tokens: int, concurrency: int) -> list[dict]:
    """One answer per prompt at temperature 1: prompt, text, finish reason, completion tokens."""
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", timeout=600)
    gate = asyncio.Semaphore(concurrency)

    async def one(prompt: str) -> dict:
        async with gate:
            r = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                     max_tokens=max_tokens, temperature=1.0, user="preference-v0")
        return {"max_tokens": max_tokens, "prompt": prompt, "text": r.choices[0].message.content or "",
                "finish_reason": r.choices[0].finish_reason, "completion_tokens": r.usage.completion_tokens}

    try:
        return await asyncio.gather(*(one(p) for p in prompts))
    finally:
        await client.close()


def collect(n: int, budgets: list[int], concurrency: int, seed: int) -> list[dict]:
    """Serve the bundled model and collect ``n`` answers per budget."""
    kafka = KafkaSettings(topic_prefix=f"bench-pref-{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka)
    work = Path(tempfile.mkdtemp(prefix="preference-v0-"))
    env = {"RLHF_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "RLHF_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
           "RLHF_STATE_DIR": str(work), "HF_HUB_OFFLINE": "1",
           "RLHF_BASE_MODEL": str(ServiceSettings().base_model)}
    serving = Service("serving.cli", free_port(), env, work / "serving.log")
    prompts = load_prompts()
    rng = random.Random(seed)
    try:
        serving.start("/readyz", timeout_s=600)
        answers = []
        for budget in budgets:
            started = time.monotonic()
            answers += asyncio.run(ask(serving.url, [rng.choice(prompts) for _ in range(n)], budget, concurrency))
            print(f"{n} answers at max_tokens={budget} in {time.monotonic() - started:.0f}s")
        return answers
    finally:
        serving.stop()


def summary(answers: list[dict]) -> list[dict]:
    """Per budget: mean words, share stopped, share non-repetitive, mean p_up under each preference."""
    rows = []
    for budget in sorted({a["max_tokens"] for a in answers}):
        group = [a for a in answers if a["max_tokens"] == budget]
        words = [len(a["text"].split()) for a in group]
        row = {"max_tokens": budget, "answers": len(group), "mean_words": statistics.mean(words),
               "median_words": statistics.median(words),
               "stopped": sum(a["finish_reason"] == "stop" for a in group) / len(group),
               "distinct_trigrams_ge_0.9": sum(distinct_trigram_ratio(a["text"]) >= 0.9 for a in group) / len(group)}
        for name, pref in PREFERENCES.items():
            p = [pref().p_up(a["prompt"], a["text"], a["finish_reason"]) for a in group]
            # The interval of the rate users would show on this many votes (expected up count, rounded).
            row[f"p_up_{name}"] = statistics.mean(p)
            row[f"p_up_{name}_ci95_at_n"] = wilson(round(sum(p)), len(p))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="answers per budget")
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[64], help="completion budgets (tokens)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--answers", type=Path, help="re-score these saved answers instead of serving")
    args = parser.parse_args()
    if args.answers:
        answers = json.loads(args.answers.read_text())["answers"]
    else:
        answers = collect(args.n, args.max_tokens, args.concurrency, args.seed)
    rows = summary(answers)
    for row in rows:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else [round(x, 3) for x in v] if isinstance(v, tuple)
                          else v for k, v in row.items()}))
    if not args.answers:
        out = write_json(f"preference-v0-{utc_stamp()}", {"args": {k: str(v) for k, v in vars(args).items()},
                                                        "load": os.getloadavg(), "summary": rows,
                                                        "answers": answers})
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
