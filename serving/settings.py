"""Serving configuration: environment variables ``RLHF_SERVING_<FIELD>``, or flags of ``rlhf-serve``.

The shared facts (state directory, base model, Kafka) come from :class:`proto.settings.ServiceSettings`
(``RLHF_STATE_DIR``, ``RLHF_BASE_MODEL``, ``RLHF_KAFKA_*``); the base model is policy version 0.
"""

import ipaddress
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from proto.api_keys import default_path
from proto.settings import ServiceSettings


class Settings(ServiceSettings):
    """Every knob of the serving process. Environment prefix ``RLHF_SERVING_``."""

    model_config = SettingsConfigDict(env_prefix="RLHF_SERVING_")

    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, description="HTTP port.")
    served_model_name: str = Field("smollm2-135m-instruct", description="Name in /v1/models and requests.")
    dtype: str = Field(
        "float32",
        description="Engine dtype. float32 keeps behaviour log-probs exact for PPO's importance ratio; "
        "bfloat16 is about twice as fast on CPU but quantises log-probs in steps of 0.125.",
    )
    max_model_len: int = Field(2048, description="Context length in tokens (prompt + completion).")
    default_max_tokens: int = Field(256, description="Completion budget when a request sets none (tokens).")
    max_request_bytes: int = Field(1 << 20, description="Largest request body accepted (bytes); larger → 413.")
    request_body_timeout_s: float = Field(
        30.0, gt=0, description="Longest a client may take to send a request body, from the end of its "
        "headers (s); slower → 408 request_timeout, so a stalled upload does not hold a connection open.")
    limit_concurrency: int = Field(
        512, ge=1, description="Open connections (or requests in progress) at which new requests get 503, so "
        "one client cannot exhaust the process's file descriptors (uvicorn's limit_concurrency).")
    forwarded_allow_ips: str = Field(
        "", description="Comma-separated addresses or networks (CIDR) of the proxies whose X-Forwarded-For "
        "and X-Forwarded-Proto are trusted for the client IP and scheme; '*' trusts any peer. Empty (the "
        "default) trusts none, so a client cannot choose its own IP (the per-IP limit on new anonymous "
        "identities). Set it to the load balancer's addresses when serving runs behind one.")
    swap_drain_timeout_s: float = Field(
        30.0, gt=0, description="Longest a policy swap waits for requests in flight to finish on the old "
        "weights (s); those still running then are cut (a stream ends with an error frame, code policy_swap; "
        "a non-streaming request gets 503) and the swap proceeds.")
    max_generation_s: float = Field(
        300.0, gt=0, description="Longest generation of one request (s); choices unfinished then end with "
        "finish_reason length.")
    kv_cache_gib: int = Field(1, description="KV cache size on CPU (GiB).")
    data_dir: Path | None = Field(
        None, description="Serving's own durable data: event spool and current-vote index (default <state>/serving)."
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the /admin endpoints; they are disabled without one."
    )
    api_keys_file: Path | None = Field(
        None, description="API keys: lines '<sha256 hex of the key> <user id>' (default <state>/serving/api_keys; "
        "add one with `python -m serving.keys add USER`). Re-read when it changes.")
    anonymous: bool = Field(
        False, description="Also serve clients without a key: each browser gets a server-signed identity "
        "'anon-…' in a cookie. For the local chat page and demos; off by default.")
    anonymous_per_minute: float = Field(
        10.0, gt=0, description="New anonymous identities one client IP may get per minute (burst the same).")
    secret: SecretStr | None = Field(
        None, description="Key (≥ 32 characters) that signs feedback tokens and anonymous identities; every "
        "replica behind one load balancer needs the same. Default: generated once into <state>/serving/secret.")
    feedback_token_ttl_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="How long after a response votes on it are accepted (s).")
    chat_per_minute: float = Field(
        60.0, gt=0, description="Chat completion requests one identity may make per minute, per replica "
        "(burst the same).")
    feedback_per_minute: float = Field(
        30.0, gt=0, description="Votes one identity may cast per minute, per replica (burst the same).")
    max_streams_per_user: int = Field(
        4, ge=1, description="Streaming chat completions one identity may have open at once, per replica.")

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, value: str) -> str:
        # uvicorn would take a misspelt address as a literal that never matches: refuse it here instead
        for entry in (e.strip() for e in value.split(",")):
            if entry and entry != "*":
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"{entry!r} is not an IP address, a network (10.0.0.0/8) or '*'") \
                        from None
        return value

    @model_validator(mode="after")
    def _derive_paths(self) -> "Settings":
        if self.data_dir is None:
            self.data_dir = self.state_dir / "serving"
        if self.api_keys_file is None:
            self.api_keys_file = default_path(self.state_dir)
        if self.secret is not None and len(self.secret.get_secret_value()) < 32:
            raise ValueError("RLHF_SERVING_SECRET must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        if not (self.base_model / "config.json").exists():
            raise ValueError(f"no model at {self.base_model} (RLHF_BASE_MODEL): run ./rlhf setup, or "
                             "point it at a Hugging Face model directory")
        return self
