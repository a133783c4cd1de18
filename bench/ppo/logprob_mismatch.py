"""Train/serve log-prob mismatch: vLLM's behaviour log-probs against the learner's float32 log-probs.

In live mode PPO's importance ratio is π_θ(a)/π_behaviour(a), with π_behaviour the log-prob the serving
engine recorded. If the engine and the learner disagree on the same weights, the ratio is off before any
update. This script samples responses with vLLM's offline ``LLM`` on the bundled model (temperature 1,
``logprobs=0``: the raw log-prob of each sampled token), recomputes the same tokens' log-probs with
transformers in float32 exactly as the learner does (learner/model.py), and reports per engine dtype:
mean and max |Δ log-prob|, and the share of tokens whose ratio exp(Δ) is already outside PPO's clip range
[0.8, 1.2].

Run (about 2 minutes on 2 cores; each dtype in its own process):
    .state/venv/bin/python bench/ppo/logprob_mismatch.py
Writes bench/results/logprob_mismatch.json.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def measure(dtype: str, max_tokens: int) -> dict:
    """Sample with vLLM in ``dtype``, recompute with HF float32; return the mismatch statistics."""
    import torch
    from vllm import LLM, SamplingParams

    from learner.gates import load_prompts
    from learner.model import chat_prompt_ids, load_lm, load_tokenizer, pack, response_logits
    from learner.ppo import logprobs_of
    from learner.settings import PROMPTS
    from proto.settings import ServiceSettings

    model = ServiceSettings().base_model
    tokenizer = load_tokenizer(model)
    prompts = [chat_prompt_ids(tokenizer, m) for m in load_prompts(PROMPTS / "heldout.jsonl")]
    llm = LLM(model=str(model), dtype=dtype, enforce_eager=True, max_model_len=1024, seed=0)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=max_tokens, logprobs=0, seed=0)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    responses = [list(o.outputs[0].token_ids) for o in outputs]
    served = [
        [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)] for o in outputs
    ]
    del llm

    lm = load_lm(model, trainable=False)
    batch = pack(prompts, responses)
    with torch.no_grad():
        learner_lp = logprobs_of(response_logits(lm, batch), batch.responses)  # (B, T)
    behaviour = torch.zeros_like(learner_lp)
    for i, s in enumerate(served):
        behaviour[i, : len(s)] = torch.tensor(s)
    delta = (learner_lp - behaviour)[batch.mask]  # (N,) over real tokens
    ratio = delta.exp()
    return {
        "engine_dtype": dtype,
        "tokens": int(delta.numel()),
        "mean_abs_delta": float(delta.abs().mean()),
        "max_abs_delta": float(delta.abs().max()),
        "share_ratio_outside_clip_0.2": float(((ratio < 0.8) | (ratio > 1.2)).float().mean()),
        "mean_abs_ratio_minus_1": float((ratio - 1).abs().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", help="measure one engine dtype in this process (internal)")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    if args.dtype:
        print(json.dumps(measure(args.dtype, args.max_tokens)))
        return
    env = {
        **os.environ,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    rows = []
    for dtype in ("float32", "bfloat16"):
        out = subprocess.run(
            [sys.executable, __file__, "--dtype", dtype, "--max-tokens", str(args.max_tokens)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'engine dtype':<12} {'tokens':>6} {'mean |Δ|':>10} {'max |Δ|':>10} {'ratio ∉ [0.8,1.2]':>18}")
    for r in rows:
        print(
            f"{r['engine_dtype']:<12} {r['tokens']:>6} {r['mean_abs_delta']:>10.2e} "
            f"{r['max_abs_delta']:>10.2e} "
            f"{r['share_ratio_outside_clip_0.2']:>18.1%}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "logprob_mismatch.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
