"""The learner's settings: one typed model per command, each field with its default and where it comes from.

Values come from, in rising priority: the defaults below, environment variables (``RLHF_LEARNER_<FIELD>``
for PPO, ``RLHF_LEARNER_SFT_<FIELD>`` for SFT), and command-line flags (``--batch-size 4``, proto/cli.py).
The shared facts come from :class:`proto.settings.ServiceSettings`: the state directory (``RLHF_STATE_DIR``),
the base model, which is policy version 0 and the frozen reference (``RLHF_BASE_MODEL``), and Kafka
(``RLHF_KAFKA_*``).

Batch sizes: one iteration trains on every fresh usable response waiting, at least ``min_batch_size`` and
at most ``batch_size`` (live traffic arrives unevenly: a fixed batch would leave the rest to go stale),
split into minibatches of ``minibatch_size`` (one optimizer step each, the last one possibly smaller) and
those into micro-batches of ``micro_batch_size`` (one forward/backward each). The sizes are checked once,
at construction, and a ``ValueError`` says which constraint fails.
"""

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from proto.device import DType, check_device
from proto.settings import ServiceSettings

PROMPTS = Path(__file__).resolve().parent / "prompts"


class Settings(ServiceSettings):
    """PPO learner settings (environment prefix ``RLHF_LEARNER_``).

    From the base: ``state_dir`` holds the learner's checkpoints (``<state>/learner``) and the policy store
    (``<state>/policies``); ``base_model`` is policy version 0 and the frozen reference (Ouyang et al. 2022
    §3.5: PPO starts from, and is penalised toward, the SFT model).
    """

    model_config = SettingsConfigDict(env_prefix="RLHF_LEARNER_")

    # --- where things are ---------------------------------------------------------------------------
    policy_store: str | None = Field(
        None,
        description="checkpoint store URI for published policies; default "
        "file://<state_dir>/policies (only file:// is implemented)",
    )
    reward_url: str = Field("http://127.0.0.1:8001", description="reward service base URL (POST /v1/score)")
    reward_timeout_s: float = Field(60.0, description="per-request timeout for /v1/score, seconds")
    metrics_host: str = Field(
        "127.0.0.1", description="address the Prometheus /metrics server binds (0.0.0.0 to be scraped from "
        "another machine, as serving's and the reward service's --host)"
    )
    metrics_port: int = Field(8002, description="Prometheus /metrics port; 0 picks a free one")
    group_id: str = Field(
        "rlhf-learner",
        description="Kafka consumer group of the interactions reader; its "
        "committed offsets trail the learner's checkpoint",
    )

    # --- devices and ranks (proto/device.py, learner/distributed.py) ---------------------------------
    device: str = Field(
        "auto",
        description="auto (CUDA when torch.cuda.is_available(), else CPU), cpu, cuda or cuda:<index>; "
        "under torchrun each rank takes the GPU of its LOCAL_RANK",
    )
    dtype: DType = Field(
        "float32",
        description="float32, or bfloat16 mixed precision (the decoder layers' matmuls under torch.autocast; "
        "weights, Adam moments, the LM and value heads, log-probs and the PPO math stay float32)",
    )
    rank_wait_timeout_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="torchrun only: how long ranks 1.. wait for rank 0's next batch (it waits for traffic "
        "and runs the gates meanwhile), seconds; a dead rank is caught by torchrun, not by this",
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
    dedup_window: int = Field(
        4096,
        ge=0,
        description="response ids remembered (in the checkpoint) to drop "
        "redeliveries: Kafka delivery is at-least-once",
    )
    tis_cap: float = Field(
        2.0,
        ge=1,
        description="C of the truncated importance weight min(π_θk/π_behaviour, C) on live "
        "tokens (Yao et al. 2025, 'Your efficient RL framework secretly brings you off-policy RL "
        "training'; IMPALA's truncated ρ, Espeholt et al. 2018): stale or mismatched samples cannot "
        "blow the gradient up",
    )

    # --- PPO (Ziegler et al. 2019, code defaults of openai/lm-human-preferences unless noted) ----------
    batch_size: int = Field(
        32,
        ge=2,
        description="most responses per PPO iteration: all fresh traffic up to this "
        "(Ziegler et al. 2019 use 512 on GPUs)",
    )
    min_batch_size: int = Field(
        8,
        ge=2,
        description="fewest responses an iteration waits for (advantages are whitened over the batch)",
    )
    minibatch_size: int = Field(8, ge=1, description="responses per optimizer step")
    micro_batch_size: int = Field(4, ge=1, description="responses per forward/backward pass")
    ppo_epochs: int = Field(
        2,
        ge=1,
        description="passes over each batch (Ziegler et al. 2019 and TRL: 4; OpenRLHF: 1). "
        "Here the CPU, not the traffic, bounds learning, so two passes over more batches "
        "beat four over fewer",
    )
    trainable_layers: int = Field(
        4,
        ge=1,
        description="top decoder layers (with the final norm) the policy trains; "
        "the rest is the SFT model's frozen trunk, shared with the reference "
        "(learner/model.py). The reward model trains as many by default",
    )
    learning_rate: float = Field(
        5e-5,
        gt=0,
        description="Adam step size of the trained top layers and value head "
        "(TRL PPOConfig: 3e-6 for a fully trained model; on the top 4 of 30 layers 3e-6 "
        "gave an approx-KL of 0.001 per iteration here, 2e-5 with 4 epochs 0.005–0.007)",
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
        description="value-loss weight; the value head shares the policy's trunk (lm-human-preferences: 0.1)",
    )
    gamma: float = Field(1.0, ge=0, le=1, description="discount within a response (Ziegler et al. 2019: 1)")
    lam: float = Field(
        1.0,
        ge=0,
        le=1,
        description="GAE λ (Schulman et al. 2016). 1: every token's advantage "
        "is the response's return minus V(s_t), so the score reaches the first tokens "
        "while the zero-initialised value head knows nothing (with 0.95, "
        "lm-human-preferences' value, a 64-token answer's first token sees 0.95^63 = 4% "
        "of the score until V is learned)",
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
        256,
        ge=1,
        description="responses over which β may move by 20% (Ziegler et al. 2019 "
        "§2.2, eq. 2). lm-human-preferences' 10000 is ~20 of its 512-response batches; "
        "with our 8–32-response batches it would hold β constant for hours, so the "
        "default keeps ~10–30 iterations per 20%",
    )
    seed: int = Field(0, description="torch seed for minibatch shuffling and sampling")

    min_reward_accuracy: float = Field(
        0.6,
        ge=0,
        le=1,
        description="no PPO until a reward-model version reaches this held-out balanced "
        "accuracy: rewards from a model no better than chance are noise that PPO would still "
        "follow. Once one version has, PPO goes on (a held-out set of 10–30 votes swings by "
        "±0.15 between versions; stopping on each dip stalled learning). 0 turns the check off",
    )
    min_reward_heldout_votes: int = Field(
        10, ge=0, description="...and measured on at least this many held-out votes"
    )
    reward_wait_s: float = Field(
        10.0, gt=0, description="while the reward model is not good enough: seconds between checks"
    )

    # --- checkpoints and publishing --------------------------------------------------------------------
    keep_checkpoints: int = Field(2, ge=1, description="learner checkpoints kept on disk (newest first)")
    publish_every: int = Field(
        2,
        ge=1,
        description="run the promotion gates every this many iterations: a version "
        "then serves long enough (~2 iterations of all fresh traffic) to collect the votes that "
        "measure it, and the gates' generation is paid half as often",
    )
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
        "prompts may trail the current version's, and version 0's (a fixed anchor, so "
        "promotions cannot ratchet down by the tolerance each time), by at most this "
        "(reward-model units: log-odds, so 0.1 is about 2.5 points of P(thumbs up) near 1/2)",
    )
    heldout_prompts: Path = Field(
        PROMPTS / "heldout.jsonl",
        description="JSONL of {'messages': [...]}: the reward gate's prompts, never trained on",
    )
    canary_prompts: Path = Field(
        PROMPTS / "canary.jsonl",
        description="JSONL of {'messages': [...]}: each must still get non-empty answers that end with EOS",
    )
    gate_max_new_tokens: int = Field(
        96, ge=1, description="token budget of gate answers; a canary answer must end within it"
    )
    canary_samples: int = Field(
        4,
        ge=1,
        description="sampled answers (temperature 1) per canary prompt: judged on samples, not one decode",
    )
    canary_tolerance: float = Field(
        0.25,
        ge=0,
        le=1,
        description="the candidate's share of sampled canary answers that end within the "
        "budget may trail version 0's share by at most this",
    )
    live_canary: bool = Field(
        True,
        description="on: a candidate that passes the gates is published as CANDIDATE (weights in the store, "
        "checkpoint_uri set) and the canary controller (python -m learner.canary_controller) serves it to a "
        "share of users beside the incumbent and promotes or rolls it back on their votes; the learner trains "
        "on from it but gates and publishes nothing while any version is CANDIDATE or CANARY. Off: a passing "
        "candidate is published PROMOTED at once (no live test: run without the controller)",
    )
    max_iterations: int | None = Field(
        None,
        ge=1,
        description="stop after this many iterations in total "
        "(counted across restarts); null runs until stopped",
    )
    poll_timeout_s: float = Field(1.0, gt=0, description="Kafka poll timeout while waiting for a batch")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        return check_device(value)

    @model_validator(mode="after")
    def _check_batch_sizes(self) -> "Settings":
        if "min_batch_size" not in self.model_fields_set:
            self.min_batch_size = min(self.min_batch_size, self.batch_size)
        if self.min_batch_size > self.batch_size:
            raise ValueError(f"min_batch_size {self.min_batch_size} exceeds batch_size {self.batch_size}")
        if self.minibatch_size % self.micro_batch_size:
            raise ValueError(
                f"minibatch_size {self.minibatch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size}"
            )
        return self

    @property
    def checkpoint_dir(self) -> Path:
        """Where the learner's own training checkpoints go."""
        return self.state_dir / "learner"

    @property
    def store_uri(self) -> str:
        """The policy store's URI (``policy_store`` or ``file://<state_dir>/policies``)."""
        return self.policy_store or (self.state_dir / "policies").resolve().as_uri()


class SFTSettings(ServiceSettings):
    """Supervised fine-tuning settings (environment prefix ``RLHF_LEARNER_SFT_``); the model fine-tuned is
    the base's ``base_model`` (``RLHF_BASE_MODEL``)."""

    model_config = SettingsConfigDict(env_prefix="RLHF_LEARNER_SFT_")

    data: Path = Field(description="JSONL of demonstrations, see learner/sft.py")
    output_dir: Path = Field(description="where the fine-tuned HF model directory is written")
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
