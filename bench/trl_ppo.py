"""TRL's PPOTrainer (``trl.experimental.ppo``, TRL 1.12.0), set up the one way our benches compare with it.

bench/ppo/bench_ppo.py (CPU, beside the learner) and bench/gpu/check.py (one GPU) give it the bundled
model in float32 as policy and reference, a value model and a reward model with the same seeded scalar head,
temperature-1 samples stopped at EOS, no checkpoints, no sample generations and no reporting; they differ
only in the sizes and the device. TRL is not a project dependency: call this only where ``trl`` imports.
"""

from collections.abc import Callable
from pathlib import Path


def trl_tokenizer(model_dir: Path):
    """The bundled tokenizer as TRL needs it: left padding, and a pad token of its own."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    tokenizer.pad_token = "<|endoftext|>"  # TRL masks by pad id; <|im_end|> must stay visible
    return tokenizer


def trl_ppo_trainer(
    model_dir: Path,
    tokenizer,
    scalar_model: Callable[[], object],
    train_prompt_ids: list[list[int]],
    eval_prompt_ids: list[list[int]],
    *,
    output_dir: str,
    batch: int,
    num_mini_batches: int,
    epochs: int,
    response_length: int,
    episodes: int,
    rollout_batch: int,
    use_cpu: bool,
    callbacks: list,
    **config,
):
    """A ``PPOTrainer`` on ``train_prompt_ids`` that samples and trains ``episodes`` responses in all.

    ``batch`` responses per iteration, its only micro-batch (one gradient-accumulation step), split into
    ``num_mini_batches`` for ``epochs`` epochs; ``rollout_batch`` responses per forward when it samples.
    ``scalar_model()`` builds the value model and the reward model (it seeds its head, so both start the
    same); ``config`` are further ``PPOConfig`` fields (bench_ppo's learning rate).
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    args = PPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=batch,  # batch = this × gradient_accumulation_steps
        gradient_accumulation_steps=1,
        num_mini_batches=num_mini_batches,
        num_ppo_epochs=epochs,
        response_length=response_length,
        temperature=1.0,
        stop_token="eos",
        total_episodes=episodes,
        local_rollout_forward_batch_size=rollout_batch,
        num_sample_generations=0,
        report_to="none",
        save_strategy="no",
        use_cpu=use_cpu,
        bf16=False,
        seed=0,
        disable_tqdm=True,
        logging_steps=1,
        **config,
    )
    return PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        ref_model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        reward_model=scalar_model(),
        value_model=scalar_model(),
        train_dataset=Dataset.from_dict({"input_ids": train_prompt_ids}),
        eval_dataset=Dataset.from_dict({"input_ids": eval_prompt_ids}),
        callbacks=callbacks,
    )
