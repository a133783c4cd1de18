"""Run the serving process: ``python -m serving.cli`` (console script ``rlhf-serve``).

Configuration comes from the environment (see serving/settings.py and proto/topics.py); flags override
host and port.
"""

import argparse
import logging
import os

import uvicorn

from serving.app import build_app
from serving.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the policy over an OpenAI-compatible HTTP API.")
    parser.add_argument("--host", help="bind address (default from RLHF_SERVING_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default from RLHF_SERVING_PORT, 8000)")
    args = parser.parse_args()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    # vLLM's CPU engine: both cores for the engine, model files from disk only.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = settings.state_dir / "cache"
    for var, sub in (("VLLM_CACHE_ROOT", "vllm"), ("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("HF_HOME", "hf")):
        os.environ.setdefault(var, str(cache / sub))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 unless told otherwise: trust only the configured proxies.
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level="info",
                proxy_headers=bool(settings.forwarded_allow_ips),
                forwarded_allow_ips=settings.forwarded_allow_ips,
                limit_concurrency=settings.limit_concurrency)


if __name__ == "__main__":
    main()
