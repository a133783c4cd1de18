"""Benchmark of hot swaps: generation pause and failed requests while policies are swapped under load,
side by side with the alternative, restarting serving on the new weights.

Starts serving (its own topics on the running broker), keeps ``--clients`` streaming chat clients busy,
and publishes ``--swaps`` policy versions (alternating between the bundled model and a perturbed copy) on
the policy topic. For each swap it reports serving's own generation pause and load time
(``rlhf_serving_generation_pause_seconds``, ``rlhf_serving_swap_duration_seconds``); over the run, failed
requests. Then, as the peer, it restarts serving once on other weights under the same load and reports the
time the API was down and the requests that failed. Prints a table; writes ``bench/results/swap-<time>.json``.

    .state/venv/bin/python -m bench.swap.run [--swaps 4] [--clients 4]
"""

import argparse
import os
import threading
import time

import httpx
import torch
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.results import RESULTS, utc_stamp, write_json
from loop.processes import Service, free_port
from proto import topics, wire
from proto.api_keys import KeyFile
from proto.events_pb2 import PolicyStatus, PolicyVersion
from proto.kafka import idempotent_producer
from proto.policy_store import weights_sha256
from proto.settings import KafkaSettings, ServiceSettings
from proto.topics import ensure_topics

MODEL = "smollm2-135m-instruct"


class Load:
    """``n`` clients streaming chats in a loop (authenticated by ``headers``); counts successes and failures."""

    def __init__(self, url: str, headers: dict[str, str], n: int):
        self.url, self.headers, self.n = url, headers, n
        self.ok = self.failed = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(n)]

    def _client(self, i: int) -> None:
        body = {"model": MODEL, "stream": True, "max_tokens": 32,
                "messages": [{"role": "user", "content": f"Tell me a short fact about the number {i}."}]}
        while not self.stop.is_set():
            try:
                with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=body, headers=self.headers,
                                  timeout=120) as r:
                    lines = [line for line in r.iter_lines() if line]
                good = r.status_code == 200 and lines[-1] == "data: [DONE]" and '"error"' not in "".join(lines)
                self.ok, self.failed = self.ok + good, self.failed + (not good)
            except httpx.HTTPError:
                self.failed += 1
                time.sleep(0.5)

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(180)


def histogram(url: str, name: str) -> tuple[float, float]:
    """(sum, count) of histogram ``name`` on ``url``/metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return samples.get(f"{name}_sum", 0.0), samples.get(f"{name}_count", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    stamp = utc_stamp()
    work = RESULTS / f"swap-{stamp}"
    base = ServiceSettings().base_model
    perturbed = work / "perturbed"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(1.01)
    model.save_pretrained(perturbed)
    AutoTokenizer.from_pretrained(base).save_pretrained(perturbed)

    kafka = KafkaSettings(topic_prefix=f"bench-swap-{stamp}.")
    ensure_topics(kafka)
    env = {"RLHF_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "RLHF_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
           "RLHF_SERVING_DATA_DIR": str(work / "serving"), "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
           "RLHF_SERVING_API_KEYS_FILE": str(work / "api_keys"),
           # this measures swaps under load, not the per-user limits: one bench user sends every request
           "RLHF_SERVING_CHAT_PER_MINUTE": "1000000", "RLHF_SERVING_MAX_STREAMS_PER_USER": "1024"}
    headers = {"Authorization": f"Bearer {KeyFile(work / 'api_keys').add('bench')}"}
    serving = Service("serving.cli", free_port(), env, work / "serving.log").start("/readyz", 600)
    producer = idempotent_producer(kafka, "bench-swap")
    swaps = []
    try:
        with Load(serving.url, headers, args.clients) as load:
            time.sleep(10)
            for version in range(1, args.swaps + 1):
                path = perturbed if version % 2 else base
                record = PolicyVersion(version=version, parent=version - 1, checkpoint_uri=path.resolve().as_uri(),
                                       weights_sha256=weights_sha256(path), created_at=wire.now(),
                                       status=PolicyStatus.POLICY_STATUS_PROMOTED)
                pause0, load0 = histogram(serving.url, "rlhf_serving_generation_pause_seconds"), histogram(
                    serving.url, "rlhf_serving_swap_duration_seconds")
                producer.send(kafka.topic(topics.POLICY), key=wire.key_of(record), value=wire.encode(record)).get(30)
                while httpx.get(f"{serving.url}/v1/models").json()["data"][0]["policy_version"] != version:
                    time.sleep(0.2)
                pause1, load1 = histogram(serving.url, "rlhf_serving_generation_pause_seconds"), histogram(
                    serving.url, "rlhf_serving_swap_duration_seconds")
                swaps.append({"version": version, "pause_s": pause1[0] - pause0[0], "load_s": load1[0] - load0[0]})
                time.sleep(5)
            swap_ok, swap_failed = load.ok, load.failed
            # The peer: restart serving on other weights under the same load.
            serving.stop()
            down_at = time.monotonic()
            serving.env["RLHF_BASE_MODEL"] = str(perturbed)
            serving.start("/readyz", 600)
            restart_down_s = time.monotonic() - down_at
            time.sleep(5)
        restart_failed = load.failed - swap_failed
    finally:
        producer.close()
        serving.stop()

    console = Console()
    table = Table(title=f"Policy swaps under {args.clients} streaming clients (float32 SmolLM2-135M, CPU)")
    for col in ("swap", "generation pause (s)", "weight load (s)"):
        table.add_column(col, justify="right")
    for s in swaps:
        table.add_row(f"v{s['version']}", f"{s['pause_s']:.2f}", f"{s['load_s']:.2f}")
    console.print(table)
    peer = Table(title="In-place swap vs restarting serving")
    for col in ("method", "new requests held / API down (s)", "failed requests", "completed requests"):
        peer.add_column(col, justify="right")
    mean_pause = sum(s["pause_s"] for s in swaps) / max(len(swaps), 1)
    peer.add_row(f"in-place swap (mean of {len(swaps)})", f"{mean_pause:.2f}", str(swap_failed), str(swap_ok))
    peer.add_row("restart serving", f"{restart_down_s:.1f}", str(restart_failed), "")
    console.print(peer)
    out = write_json(f"swap-{stamp}", {"args": vars(args), "swaps": swaps, "swap_failed": swap_failed,
                                       "swap_ok": swap_ok, "restart_down_s": restart_down_s,
                                       "restart_failed": restart_failed}, indent=2)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
