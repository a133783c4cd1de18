"""Run the serving process: ``python -m serving.cli [--port 8000] ...`` (console script ``rlhf-serve``).

Every field of :class:`serving.settings.Settings` is a flag (``--help`` lists them with defaults) and an
environment variable (``RLHF_SERVING_*``; the shared ``RLHF_STATE_DIR``, ``RLHF_BASE_MODEL``,
``RLHF_KAFKA_*``); see proto/cli.py.
"""

import os

from proto import cli
from serving.settings import Settings


class Serve(Settings):
    """Serve the policy over an OpenAI-compatible HTTP API."""

    def cli_cmd(self) -> None:
        # Before vLLM reads its environment: vLLM's CPU engine gets both cores, model files from disk only.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        cache = self.state_dir / "cache"
        for var, sub in (("VLLM_CACHE_ROOT", "vllm"), ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
                         ("HF_HOME", "hf")):
            os.environ.setdefault(var, str(cache / sub))
        import uvicorn

        from serving.app import build_app

        # uvicorn trusts X-Forwarded-For from 127.0.0.1 unless told otherwise: trust only the configured
        # proxies.
        uvicorn.run(build_app(self), host=self.host, port=self.port, log_level="info",
                    proxy_headers=bool(self.forwarded_allow_ips),
                    forwarded_allow_ips=self.forwarded_allow_ips,
                    limit_concurrency=self.limit_concurrency)


def main(argv: list[str] | None = None) -> None:
    cli.run(Serve, "rlhf-serve", argv)


if __name__ == "__main__":
    main()
