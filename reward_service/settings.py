"""Configuration of the reward service: environment variables ``RLHF_REWARD_<FIELD>``, or flags of
``rlhf-reward``.

The shared facts come from :class:`proto.settings.ServiceSettings`: the state directory
(``RLHF_STATE_DIR``; this service keeps its files in ``<state>/reward``), the base model, whose copy with a
scalar head is the reward model (``RLHF_BASE_MODEL``), and Kafka (``RLHF_KAFKA_*``).
"""

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from proto.device import DType, check_device
from proto.settings import ServiceSettings
from reward_service.identity import DEFAULT_SHARE_FACTOR, DEFAULT_WINDOW_VOTES


class Settings(ServiceSettings):
    """Every knob of the reward service, with its default and unit."""

    model_config = SettingsConfigDict(env_prefix="RLHF_REWARD_")

    # HTTP.
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8001, description="TCP port to listen on")
    max_batch_size: int = Field(64, ge=1, description="most inputs one POST /v1/score may carry")
    max_request_bytes: int = Field(
        4 << 20, ge=1024, description="largest request body accepted, bytes; larger → 413 (a full batch of"
        " max_batch_size inputs at max_context_tokens is about 1 MiB)"
    )
    request_body_timeout_s: float = Field(
        30.0, gt=0, description="longest a client may take to send a request body, s; slower → 408"
    )
    max_context_tokens: int = Field(2048, ge=16, description="longest chat-templated prompt+response, tokens")
    score_micro_batch: int = Field(8, ge=1, description="sequences per forward pass when scoring (HTTP)")
    reload_check_s: float = Field(
        1.0, ge=0, description="how often /v1/score looks for a newer checkpoint, s"
    )

    # Kafka consumption.
    train: bool = Field(True, description="consume interactions+feedback and train")
    group_id: str = Field("rlhf-reward", description="Kafka consumer group")
    poll_timeout_ms: int = Field(500, ge=1, description="longest wait of one poll, ms")
    poll_max_records: int = Field(256, ge=1, description="most records handled between two training steps")

    # Device and precision (proto/device.py): the trainer and the scorer share them.
    device: str = Field(
        "auto", description="auto (CUDA when torch.cuda.is_available(), else CPU), cpu, cuda or cuda:<index>"
    )
    dtype: DType = Field(
        "float32",
        description="float32, or bfloat16 mixed precision (the decoder layers' matmuls under torch.autocast;"
        " weights, AdamW moments, the scalar head and rewards stay float32)",
    )

    # Model and optimisation.
    trainable_layers: int = Field(
        4, ge=0, description="top decoder layers trained (the rest stay frozen SFT)"
    )
    learning_rate: float = Field(2e-5, gt=0, description="AdamW step size of the trained decoder layers")
    head_learning_rate: float = Field(1e-3, gt=0, description="AdamW step size of the scalar head")
    train_batch_size: int = Field(
        8,
        ge=1,
        description="most votes per optimiser step (every waiting vote up to this; with more waiting, the"
        " next step follows at once). Larger steps cost the same CPU per vote but learn less per vote",
    )
    train_min_votes: int = Field(
        8, ge=1, description="votes to wait for before a step, unless the oldest has waited train_max_wait_s"
    )
    train_max_wait_s: float = Field(
        10.0, ge=0, description="longest a trainable vote waits (since it was cast) for a fuller step, s"
    )
    train_micro_batch_tokens: int = Field(
        1024, ge=1, description="most padded tokens per forward/backward pass of a step (bounds memory)"
    )
    trunk_cache_mb: int = Field(
        256, ge=0, description="memory for cached outputs of the frozen layers (held-out set, pairs), MiB"
    )
    torch_threads: int = Field(
        1,
        ge=0,
        description="torch intra-op threads of the service process (0: torch's default, one per core). 1"
        " suits a machine shared with serving: less CPU per vote, no waits on descheduled peers (README.md)",
    )
    pairwise_weight: float = Field(
        1.0, ge=0, description="weight of the Bradley–Terry loss vs the pointwise one"
    )

    # Held-out evaluation.
    heldout_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="share of prompts never trained on (0.2: the learner waits for ~10 held-out votes "
        "before PPO; at the main job's ~15 votes a minute 0.1 took 10 minutes to get there)",
    )
    heldout_eval_size: int = Field(128, ge=1, description="most recent held-out votes scored per checkpoint")
    heldout_votes_per_response: int = Field(
        3, ge=1, description="most votes of one response in the held-out evaluation set (one per user)"
    )

    # Votes per identity (reward_service/identity.py): no one voter outweighs the others.
    identity_share_factor: float = Field(
        DEFAULT_SHARE_FACTOR,
        ge=0,
        description="most votes one identity may hold among the latest identity_window_votes received, as"
        " a multiple of a typical other voter's (Σc²/Σc over the other identities, at least 16); its votes"
        " beyond it are kept but never trained nor evaluated, and the held-out evaluation set is capped"
        " alike. 0: no cap",
    )
    identity_window_votes: int = Field(
        DEFAULT_WINDOW_VOTES,
        ge=2,
        description="votes the cap and the rlhf_reward_identit* gauges look back over (latest first)",
    )

    # Checkpoints.
    checkpoint_every_examples: int = Field(64, ge=1, description="votes trained between two checkpoints")
    checkpoint_interval_s: float = Field(
        60.0, gt=0, description="longest time new progress stays unsaved (and unserved), s"
    )
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints whose weights are kept on disk")

    # Join store.
    join_timeout_s: float = Field(3600.0, gt=0, description="how long a vote waits for its interaction, s")
    max_pending_votes: int = Field(10_000, ge=1, description="most votes waiting for their interaction")
    max_interactions: int = Field(100_000, ge=1, description="most interactions kept for later votes")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        return check_device(value)

    @property
    def reward_dir(self) -> Path:
        """This service's own state: checkpoints and the join store."""
        return self.state_dir / "reward"

    @property
    def checkpoint_dir(self) -> Path:
        """Versioned checkpoints, one directory ``v000012`` per version."""
        return self.reward_dir / "checkpoints"

    @property
    def store_path(self) -> Path:
        """SQLite file of the join store (interactions and votes awaiting or done with training)."""
        return self.reward_dir / "joins.sqlite"
