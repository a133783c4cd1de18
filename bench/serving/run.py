"""Serving benchmark: our chat endpoint (``serving/``) against plain vLLM's OpenAI server, same load.

What it measures. Both servers serve the bundled SmolLM2-135M-Instruct with the same engine settings
(float32, max_model_len 2048, eager, 1 GiB KV cache, both cores). To be fair on a small machine they run one
at a time: start one, drive every concurrency level, stop it, then the other. Each level sends the same
fixed list of streamed chat requests (real prompts, fixed ``max_tokens``, temperature and a per-request
seed, so both servers generate comparable lengths) from N concurrent clients (closed loop: each client sends
its next request when the previous one ends). Per server and level it reports requests/s and output tokens/s
(from the final usage chunk), p50/p95 time to first token (first chunk carrying text), p50/p95 end-to-end
latency, mean tokens per response and failures; then the ratio ours/vLLM. Because the machine may be shared,
it also counts the CPU seconds of the server's process tree and of all other processes during each level:
output tokens per server CPU-second is the figure least disturbed by neighbours, and "others' CPU" says how
much they took (compare the two servers' values before trusting a ratio). Ours does more per request than
plain vLLM: per-token log-probs, an Interaction event spooled to disk and produced to Kafka, a response-
index row; the ratio is the price of that.

Run from the repository root (the broker named by ``RLHF_KAFKA_BOOTSTRAP_SERVERS``, default
127.0.0.1:9092, must be up; the bench creates its own topics under a fresh ``bench-<time>.`` prefix)::

    .state/venv/bin/python -m bench.serving.run                 # defaults: 1, 4, 16 clients
    .state/venv/bin/python -m bench.serving.run --concurrency 1 4 --requests 4

Flags:
    --concurrency C [C ...]  concurrent clients per level (default 1 4 16)
    --requests N             requests per level (default: max(8, 2 x clients))
    --max-tokens N           completion budget per request (default 64)
    --temperature T          sampling temperature (default 0.7); request i uses seed --seed + i
    --seed S                 base seed (default 1234)
    --warmup N               unmeasured requests after each server starts (default 2)
    --servers S [S ...]      which servers, in order: ours, vllm (default both, ours first)
    --repeat R               alternate the servers R times and pool the samples (default 1)
    --timeout S              per-request timeout in seconds (default 300)
    --model-dir DIR          model directory (default <state>/models/SmolLM2-135M-Instruct)
    --out DIR                where JSON and server logs go (default bench/results)

Output: a table on stdout and ``<out>/serving-<timestamp>.json`` (config, machine load, per-level
summaries, ratios and every request's sample); server logs in ``<out>/logs/``.
"""

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # also runnable as `python bench/serving/run.py`
    sys.path.insert(0, str(ROOT))

from bench.results import RESULTS, utc_stamp, write_json  # noqa: E402
from loop.processes import Service, free_port  # noqa: E402
from proto.api_keys import KeyFile  # noqa: E402
from proto.settings import KafkaSettings, ServiceSettings, state_dir  # noqa: E402
from proto.topics import ensure_topics  # noqa: E402

MODEL_NAME = "smollm2-135m-instruct"
# One set of engine settings for both servers.
DTYPE, MAX_MODEL_LEN, KV_CACHE_GIB = "float32", 2048, 1

PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Explain what a hash table is to a beginner programmer.",
    "Write a short poem about the sea in autumn.",
    "How do I boil an egg so the yolk stays soft?",
    "What are the main differences between a virus and a bacterium?",
    "Suggest a name for a small bakery that sells sourdough bread.",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "Why is the sky blue?",
    "I have a job interview tomorrow. How should I prepare tonight?",
    "Translate 'Where is the train station?' into Spanish and German.",
    "What is the difference between a list and a tuple in Python?",
    "Give me a simple recipe for a vegetarian pasta dinner.",
    "How can I stay focused when working from home?",
    "Explain photosynthesis in simple terms.",
    "Write a polite email declining a meeting invitation.",
]


def engine_env(state: Path) -> dict[str, str]:
    """vLLM CPU environment shared by both servers (as serving/cli.py sets it)."""
    cache = state / "cache"
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GIB),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "HF_HUB_OFFLINE": "1",
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "HF_HOME": str(cache / "hf"),
    }


def make_service(name: str, args, logs: Path, data_dir: Path,
                 topic_prefix: str) -> tuple[Service, str, dict[str, str]]:
    """The Service for ``name`` (``ours`` or ``vllm``), the path that answers 200 once it is ready, and the
    headers that authenticate a client (ours: a fresh API key; plain vLLM ignores them)."""
    env = engine_env(state_dir())
    log = logs / f"{name}.log"
    keys = data_dir / "api_keys"
    headers = {"Authorization": f"Bearer {KeyFile(keys).add('bench')}"}
    if name == "ours":
        env |= {
            "RLHF_SERVING_API_KEYS_FILE": str(keys),
            # this measures the engine, not the per-user limits: one bench user sends every request
            "RLHF_SERVING_CHAT_PER_MINUTE": "1000000",
            "RLHF_SERVING_MAX_STREAMS_PER_USER": "1024",
            "RLHF_BASE_MODEL": str(args.model_dir),
            "RLHF_SERVING_SERVED_MODEL_NAME": MODEL_NAME,
            "RLHF_SERVING_DTYPE": DTYPE,
            "RLHF_SERVING_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
            "RLHF_SERVING_KV_CACHE_GIB": str(KV_CACHE_GIB),
            "RLHF_SERVING_DATA_DIR": str(data_dir),
            "RLHF_KAFKA_TOPIC_PREFIX": topic_prefix,
        }
        return Service("serving.cli", free_port(), env, log), "/readyz", headers
    vllm_args = ["--host", "127.0.0.1", "--model", str(args.model_dir), "--served-model-name", MODEL_NAME,
                 "--dtype", DTYPE, "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager"]
    return Service("vllm.entrypoints.openai.api_server", free_port(), env, log, vllm_args), "/health", headers


class CpuMeter:
    """CPU seconds used by a server's process tree and by everything else on the machine (bench excluded).

    On a shared machine the second number says how much the other processes took from the server.
    """

    def __init__(self, pid: int):
        self.root, self.me = psutil.Process(pid), psutil.Process()

    def read(self) -> tuple[float, float]:
        tree = 0.0
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                tree += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        m, me = psutil.cpu_times(), self.me.cpu_times()
        busy = m.user + m.nice + m.system + m.irq + m.softirq
        return tree, busy - tree - me.user - me.system


async def one_request(client: httpx.AsyncClient, url: str, i: int, args) -> dict:
    """Send request ``i`` (prompt ``i mod len``, seed ``seed + i``) streamed; time it."""
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "seed": args.seed + i,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft = tokens = error = None
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                error = f"HTTP {resp.status_code}: {(await resp.aread())[:200].decode(errors='replace')}"
            else:
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        break
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        error = f"error frame: {chunk['error']}"
                    texts = [c.get("delta", {}).get("content") for c in chunk.get("choices", [])]
                    if ttft is None and any(texts):
                        ttft = time.perf_counter() - started
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    if error is None and (tokens is None or ttft is None):
        error = "stream ended without text or usage"
    return {"i": i, "ttft_s": ttft, "latency_s": time.perf_counter() - started, "completion_tokens": tokens,
            "error": error}


async def run_level(url: str, headers: dict[str, str], concurrency: int, n: int, args) -> tuple[list[dict], float]:
    """``n`` requests (with ``headers``) from ``concurrency`` closed-loop clients; return the samples and
    the wall time (s)."""
    todo = iter(range(n))  # shared by the clients: each takes the next request index
    samples: list[dict] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits, headers=headers) as client:

        async def client_loop():
            for i in todo:
                samples.append(await one_request(client, url, i, args))

        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        return samples, time.perf_counter() - started


def summarize(level: dict) -> dict:
    """Figures of one level from its samples, wall time and CPU seconds (pooled over rounds)."""
    samples, wall_s = level["samples"], level["wall_s"]
    ok = [s for s in samples if s["error"] is None]
    tokens = sum(s["completion_tokens"] for s in ok)

    def pct(key: str, q: float) -> float | None:
        return float(np.percentile([s[key] for s in ok], q)) if ok else None

    return {
        "requests": len(samples),
        "failures": len(samples) - len(ok),
        "wall_s": wall_s,
        "requests_per_s": len(ok) / wall_s,
        "output_tokens_per_s": tokens / wall_s,
        "mean_output_tokens": tokens / len(ok) if ok else None,
        "ttft_p50_s": pct("ttft_s", 50), "ttft_p95_s": pct("ttft_s", 95),
        "latency_p50_s": pct("latency_s", 50), "latency_p95_s": pct("latency_s", 95),
        "server_cpu_cores": level["server_cpu_s"] / wall_s,
        "other_cpu_cores": level["other_cpu_s"] / wall_s,
        "output_tokens_per_cpu_s": tokens / level["server_cpu_s"] if level["server_cpu_s"] else None,
    }


def bench_server(name: str, args, run: dict, levels: list[tuple[int, int]], into: dict) -> None:
    """Start ``name``, warm it up, run every level (adding samples, wall and CPU time to ``into``); stop."""
    service, ready_path, headers = make_service(name, args, run["logs"], run["data_dir"], run["topic_prefix"])
    log(f"{name}: starting on port {service.port} (log {service.log_path})")
    t0 = time.perf_counter()
    service.start(ready_path=ready_path, timeout_s=args.startup_timeout)
    try:
        into.setdefault("startup_s", []).append(time.perf_counter() - t0)
        log(f"{name}: ready in {into['startup_s'][-1]:.1f} s; {args.warmup} warm-up request(s)")
        for i in range(args.warmup):
            warm = asyncio.run(run_level(service.url, headers, 1, 1, args))[0][0]
            if warm["error"]:
                raise RuntimeError(f"{name}: warm-up request {i} failed: {warm['error']}")
        meter = CpuMeter(service.proc.pid)
        for concurrency, n in levels:
            cpu_before = meter.read()
            samples, wall = asyncio.run(run_level(service.url, headers, concurrency, n, args))
            server_cpu, other_cpu = (after - before for after, before in zip(meter.read(), cpu_before))
            this = {"samples": samples, "wall_s": wall, "server_cpu_s": server_cpu, "other_cpu_s": other_cpu}
            level = into.setdefault("levels", {}).setdefault(
                str(concurrency), {"samples": [], "wall_s": 0.0, "server_cpu_s": 0.0, "other_cpu_s": 0.0})
            for key, value in this.items():
                level[key] += value
            s = summarize(this)
            log(f"{name}: {concurrency:>2} clients, {n} requests in {wall:.1f} s: "
                f"{s['requests_per_s']:.2f} req/s, {s['output_tokens_per_s']:.1f} tok/s, "
                f"{s['failures']} failed; "
                f"server used {s['server_cpu_cores']:.2f} cores, other processes {s['other_cpu_cores']:.2f}")
        if name == "ours":  # every response should have reached Kafka by now, none left in the spool
            ready = httpx.get(service.url + "/readyz", timeout=10).json()
            into.setdefault("spool_depth_at_end", []).append(ready.get("spool_depth"))
    finally:
        service.stop()
        log(f"{name}: stopped")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


ROWS = [  # (label, summary key, format, scale, ratio ours/vLLM shown)
    ("requests/s", "requests_per_s", "{:.2f}", 1, True),
    ("output tokens/s", "output_tokens_per_s", "{:.1f}", 1, True),
    ("TTFT p50 (ms)", "ttft_p50_s", "{:.0f}", 1000, True),
    ("TTFT p95 (ms)", "ttft_p95_s", "{:.0f}", 1000, True),
    ("latency p50 (s)", "latency_p50_s", "{:.2f}", 1, True),
    ("latency p95 (s)", "latency_p95_s", "{:.2f}", 1, True),
    ("tokens per server CPU-s", "output_tokens_per_cpu_s", "{:.1f}", 1, True),
    ("server CPU (cores)", "server_cpu_cores", "{:.2f}", 1, False),
    ("others' CPU (cores)", "other_cpu_cores", "{:.2f}", 1, False),
    ("tokens/response", "mean_output_tokens", "{:.1f}", 1, False),
    ("failures", "failures", "{}", 1, False),
]


def ratios_of(summaries: dict) -> dict:
    """Per level, ours/vLLM of each figure that ROWS marks for a ratio (None when undefined)."""
    out = {}
    for c, ours in summaries["ours"].items():
        vllm = summaries["vllm"][c]
        out[c] = {key: ours[key] / vllm[key] if ours[key] is not None and vllm[key] else None
                  for _, key, _, _, ratio in ROWS if ratio}
    return out


def print_table(summaries: dict, ratios: dict, servers: list[str], title: str) -> None:
    """The figures side by side, one section per level; rich if installed, else plain text."""
    header = ["clients", "metric", *("ours" if s == "ours" else "plain vLLM" for s in servers)]
    header += ["ours/vLLM"] if ratios else []
    rows = []
    for c in summaries[servers[0]]:
        for j, (label, key, fmt, scale, _) in enumerate(ROWS):
            values = [summaries[s][c][key] for s in servers]
            cells = [fmt.format(v * scale) if v is not None else "-" for v in values]
            if ratios:
                cells.append(f"{r:.2f}" if (r := ratios[c].get(key)) is not None else "")
            rows.append([c if j == 0 else "", label, *cells])
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(x) for x in col) for col in zip(header, *rows)]
        print(title)
        for row in [header, *rows]:
            print("  ".join(x.ljust(w) if j < 2 else x.rjust(w) for j, (x, w) in enumerate(zip(row, widths))))
        return
    table = Table(title=title)
    for j, h in enumerate(header):
        table.add_column(h, justify="left" if j < 2 else "right")
    for row in rows:
        table.add_row(*row, end_section=row[1] == ROWS[-1][0])
    Console(width=120).print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="clients per level")
    p.add_argument("--requests", type=int, help="requests per level (default max(8, 2 x clients))")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=1234, help="request i uses seed + i")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured requests after each start")
    p.add_argument("--servers", nargs="+", choices=["ours", "vllm"], default=["ours", "vllm"])
    p.add_argument("--repeat", type=int, default=1, help="alternate the servers this many times")
    p.add_argument("--timeout", type=float, default=300.0, help="per request (s)")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="per server start (s)")
    p.add_argument("--model-dir", type=Path, default=ServiceSettings().base_model)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    servers = list(dict.fromkeys(args.servers))
    levels = [(c, args.requests or max(8, 2 * c)) for c in args.concurrency]

    stamp = utc_stamp()
    run = {"logs": args.out / "logs" / f"serving-{stamp}",
           "topic_prefix": f"bench-{stamp}-{uuid.uuid4().hex[:6]}."}
    run["logs"].mkdir(parents=True, exist_ok=True)
    if "ours" in servers:
        ensure_topics(KafkaSettings(topic_prefix=run["topic_prefix"]))
    started, load_before = time.perf_counter(), os.getloadavg()
    raw: dict[str, dict] = {s: {} for s in servers}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as data_dir:
        run["data_dir"] = Path(data_dir)
        for _ in range(args.repeat):
            for name in servers:
                bench_server(name, args, run, levels, raw[name])
    elapsed, load_after = time.perf_counter() - started, os.getloadavg()

    summaries = {s: {c: summarize(lv) for c, lv in raw[s]["levels"].items()} for s in servers}
    ratios = ratios_of(summaries) if len(servers) == 2 else {}
    title = (f"Chat serving: SmolLM2-135M-Instruct {DTYPE}, max_tokens {args.max_tokens}, "
             f"T {args.temperature}, {os.cpu_count()} CPUs, load {load_before[0]:.1f} -> "
             f"{load_after[0]:.1f}, {elapsed / 60:.1f} min")
    print_table(summaries, ratios, servers, title)
    if ratios:
        print("ours/vLLM above 1 is better for requests/s and tokens, worse for TTFT and latency.\n"
              "Tokens per server CPU-s divides by the CPU time of the server's processes: the figure least\n"
              "disturbed by other processes on a shared machine; others' CPU is what they used meanwhile.")
    for s in servers:
        print(f"{s}: ready after " + ", ".join(f"{t:.0f} s" for t in raw[s]["startup_s"])
              + (f"; spool depth at end {raw[s].get('spool_depth_at_end')}" if s == "ours" else ""))

    result = {
        "benchmark": "serving",
        "timestamp": stamp,
        "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "levels": levels, "model": MODEL_NAME, "dtype": DTYPE, "max_model_len": MAX_MODEL_LEN,
                   "kv_cache_gib": KV_CACHE_GIB, "enforce_eager": True, "topic_prefix": run["topic_prefix"],
                   "prompts": PROMPTS},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_before": load_before,
                    "loadavg_after": load_after},
        "elapsed_s": elapsed,
        "summaries": summaries,
        "ratios_ours_over_vllm": ratios,
        "startup_s": {s: raw[s]["startup_s"] for s in servers},
        "spool_depth_at_end": raw.get("ours", {}).get("spool_depth_at_end"),
        "samples": {s: {c: lv["samples"] for c, lv in raw[s]["levels"].items()} for s in servers},
        "server_logs": str(run["logs"]),
    }
    path = write_json(f"serving-{stamp}", result, args.out, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
