"""The learner's settings: one typed model per command, each field with its default and where it comes from.

Values come from, in rising priority: the defaults below, environment variables (``RLHF_LEARNER_<FIELD>``
for PPO, ``RLHF_LEARNER_SFT_<FIELD>`` for SFT), and command-line flags (``--batch-size 4``). Kafka's
address and topic prefix are :class:`proto.topics.KafkaSettings` (``RLHF_KAFKA_*``), shared by all services.

Batch sizes (as in TRL's PPOConfig and CleanRL): one iteration collects ``batch_size`` responses, splits
them into ``num_minibatches`` minibatches (one optimizer step each) and each minibatch into
``gradient_accumulation_steps`` micro-batches (one forward/backward each). The derived sizes are checked
once, at construction, and a ``ValueError`` says which division is inexact.
"""

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parents[1]
PROMPTS = Path(__file__).resolve().parent / "prompts"


def default_state_dir() -> Path:
    """``$RLHF_STATE_DIR``, else ``<repo>/.state``: where models, checkpoints and policies live."""
    return Path(os.environ.get("RLHF_STATE_DIR", REPO / ".state"))


def bundled_model() -> Path:
    """The bundled SFT chat model (policy version 0), as the install step converted it."""
    return default_state_dir() / "models" / "SmolLM2-135M-Instruct"


class LearnerConfig(BaseSettings):
    """PPO learner settings (environment prefix ``RLHF_LEARNER_``)."""

    model_config = SettingsConfigDict(env_prefix="RLHF_LEARNER_", extra="ignore")

    # --- where things are ---------------------------------------------------------------------------
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="root of the learner's checkpoints "
        "(<state>/learner) and the policy store (<state>/policies); $RLHF_STATE_DIR",
    )
    init_model: Path = Field(
        default_factory=bundled_model,
        description="the SFT model: policy version 0 and "
        "the frozen reference (Ouyang et al. 2022 §3.5: PPO starts from, and is "
        "penalised toward, the SFT model)",
    )
    policy_store: str | None = Field(
        None,
        description="checkpoint store URI for published policies; default "
        "file://<state_dir>/policies (only file:// is implemented)",
    )
    reward_url: str = Field("http://127.0.0.1:8001", description="reward service base URL (POST /v1/score)")
    reward_timeout_s: float = Field(60.0, description="per-request timeout for /v1/score, seconds")
    metrics_port: int = Field(8002, description="Prometheus /metrics port; 0 picks a free one")
    group_id: str = Field(
        "rlhf-learner",
        description="Kafka consumer group of the interactions reader; its "
        "committed offsets trail the learner's checkpoint",
    )

    # --- rollouts --------------------------------------------------------------------------------------
    mode: Literal["live", "generate"] = Field(
        "live",
        description="live: train on served responses with their "
        "behaviour log-probs; generate: sample fresh responses with the "
        "current policy on prompts from live traffic",
    )
    max_staleness: int = Field(
        2,
        ge=0,
        description="live mode: drop responses whose policy version is more "
        "than this many versions behind the learner's (bounded off-policyness; "
        "Noukhovitch et al. 2024, 'Asynchronous RLHF': a small lag is tolerable, PPO "
        "degrades as it grows)",
    )
    response_length: int = Field(
        64,
        ge=1,
        description="generate mode: new tokens sampled per response (TRL "
        "PPOConfig uses 53; ENVIRONMENT.md's TRL measurements use 64)",
    )
    max_live_response_length: int = Field(
        256,
        ge=1,
        description="live mode: longer served responses are "
        "dropped rather than truncated (their score is for the whole "
        "response); serving's default completion budget is 256",
    )
    max_prompt_length: int = Field(512, ge=1, description="prompts longer than this (tokens) are dropped")

    # --- PPO (Ziegler et al. 2019, code defaults of openai/lm-human-preferences unless noted) ----------
    batch_size: int = Field(
        8,
        ge=1,
        description="responses per PPO iteration (small for a 2-core CPU; "
        "Ziegler et al. 2019 use 512 on GPUs)",
    )
    num_minibatches: int = Field(2, ge=1, description="optimizer steps per epoch (lm-human-preferences: 1)")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per minibatch")
    ppo_epochs: int = Field(4, ge=1, description="passes over each batch (Ziegler et al. 2019: 4)")
    learning_rate: float = Field(
        3e-6,
        gt=0,
        description="Adam step size (TRL PPOConfig: 3e-6; "
        "lm-human-preferences' 1e-5 was tuned for batches of 512: on our batches of "
        "4 it gave an approx-KL of 0.1-0.2 per iteration, 3e-6 gave 0.01)",
    )
    adam_eps: float = Field(1e-5, gt=0, description="Adam epsilon (lm-human-preferences: 1e-5)")
    max_grad_norm: float = Field(
        1.0,
        gt=0,
        description="global gradient-norm clip (transformers' "
        "TrainingArguments default, which TRL's PPOTrainer inherits)",
    )
    clip_range: float = Field(0.2, gt=0, description="ε of the clipped surrogate (Schulman et al. 2017 §6)")
    clip_range_value: float = Field(
        0.2, gt=0, description="ε of the clipped value loss (lm-human-preferences)"
    )
    vf_coef: float = Field(
        0.1,
        ge=0,
        description="value-loss weight; the value head shares the policy's "
        "trunk (lm-human-preferences: 0.1)",
    )
    gamma: float = Field(1.0, ge=0, le=1, description="discount within a response (Ziegler et al. 2019: 1)")
    lam: float = Field(
        0.95, ge=0, le=1, description="GAE λ (Schulman et al. 2016; lm-human-preferences: 0.95)"
    )
    init_kl_coef: float = Field(
        0.15,
        ge=0,
        description="initial β of the KL penalty (lm-human-preferences' "
        "kl_coef, as reproduced in Huang et al.'s lm-human-preference-details)",
    )
    target_kl: float | None = Field(
        6.0,
        gt=0,
        description="target per-response KL of the adaptive controller, "
        "nats; null keeps β fixed (lm-human-preferences: 6)",
    )
    kl_horizon: int = Field(
        10_000,
        ge=1,
        description="responses over which β may move by 20% "
        "(Ziegler et al. 2019 §2.2; lm-human-preferences: 10000)",
    )
    seed: int = Field(0, description="torch seed for minibatch shuffling and sampling")

    # --- checkpoints and publishing --------------------------------------------------------------------
    keep_checkpoints: int = Field(2, ge=1, description="learner checkpoints kept on disk (newest first)")
    publish_every: int = Field(1, ge=1, description="run the promotion gates every this many iterations")
    kl_budget: float = Field(
        12.0,
        ge=0,
        description="gate: mean per-response KL(π‖π_ref) of the candidate's "
        "greedy answers on the held-out prompts must not exceed this, nats (twice "
        "target_kl: a policy there has escaped the controller)",
    )
    reward_tolerance: float = Field(
        0.1,
        ge=0,
        description="gate: the candidate's mean reward on the held-out "
        "prompts may trail the current version's by at most this (reward-model "
        "units: log-odds, so 0.1 is about 2.5 points of P(thumbs up) near 1/2)",
    )
    heldout_prompts: Path = Field(
        PROMPTS / "heldout.jsonl",
        description="JSONL of {'messages': [...]}: the " "reward gate's prompts, never trained on",
    )
    canary_prompts: Path = Field(
        PROMPTS / "canary.jsonl",
        description="JSONL of {'messages': [...]}: each "
        "must still get a non-empty answer that ends with EOS",
    )
    gate_max_new_tokens: int = Field(
        96, ge=1, description="greedy token budget of gate answers; a canary " "answer must end within it"
    )
    max_iterations: int | None = Field(
        None,
        ge=1,
        description="stop after this many iterations in total "
        "(counted across restarts); null runs until stopped",
    )
    poll_timeout_s: float = Field(1.0, gt=0, description="Kafka poll timeout while waiting for a batch")

    @model_validator(mode="after")
    def _check_batch_sizes(self) -> "LearnerConfig":
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of num_minibatches "
                f"{self.num_minibatches}"
            )
        if self.minibatch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"minibatch_size {self.minibatch_size} (batch_size / num_minibatches) is not a "
                f"multiple of gradient_accumulation_steps {self.gradient_accumulation_steps}"
            )
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2: advantages are whitened over the batch")
        return self

    @property
    def minibatch_size(self) -> int:
        """Responses per optimizer step."""
        return self.batch_size // self.num_minibatches

    @property
    def micro_batch_size(self) -> int:
        """Responses per forward/backward pass."""
        return self.minibatch_size // self.gradient_accumulation_steps

    @property
    def checkpoint_dir(self) -> Path:
        """Where the learner's own training checkpoints go."""
        return self.state_dir / "learner"

    @property
    def store_uri(self) -> str:
        """The policy store's URI (``policy_store`` or ``file://<state_dir>/policies``)."""
        return self.policy_store or (self.state_dir / "policies").resolve().as_uri()


class SFTConfig(BaseSettings):
    """Supervised fine-tuning settings (environment prefix ``RLHF_LEARNER_SFT_``)."""

    model_config = SettingsConfigDict(env_prefix="RLHF_LEARNER_SFT_", extra="ignore")

    data: Path = Field(description="JSONL of demonstrations, see learner/sft.py")
    output_dir: Path = Field(description="where the fine-tuned HF model directory is written")
    base_model: Path = Field(default_factory=bundled_model, description="model to fine-tune")
    epochs: int = Field(
        2,
        ge=1,
        description="passes over the data (Ouyang et al. 2022 §3.5 train SFT for "
        "16 epochs on far more data; a small demonstration set overfits sooner)",
    )
    learning_rate: float = Field(
        1e-5,
        gt=0,
        description="AdamW step size, constant (the PPO step size: "
        "small enough to stay close to the chat model it starts from; "
        "transformers' Trainer default 5e-5 is for training from a base model)",
    )
    batch_size: int = Field(4, ge=1, description="demonstrations per optimizer step")
    max_length: int = Field(
        1024,
        ge=2,
        description="prompt+response tokens; longer examples keep their "
        "last max_length tokens (the response, and as much of the prompt as fits)",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="global gradient-norm clip")
    seed: int = Field(0, description="shuffling seed")
