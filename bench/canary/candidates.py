"""Candidates of known quality for the live canary's tests and benchmark: the bundled model with its
end-of-turn logit shifted, so its answers are shorter (it stops sooner) or longer (it rarely stops).

Simulated users with the ``concise`` taste (loop/preference.py) like answers that end by themselves within
40 words, so a positive shift makes a candidate they like and a negative one a candidate they dislike,
without training anything. The end-of-turn token's row of the output layer gets ``shift`` times the mean
direction of the final hidden states, which raises that token's logit by about ``shift`` nats at a typical
position. The embeddings stay tied, as in the bundled model: serving hot-swaps weights into an engine built
for tied embeddings, which would ignore an untied output layer. So the same row is also that token's input
embedding, where the chat template ends each turn; the measured effect on the users' votes is what counts.
"""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from proto.policy_store import weights_sha256

PROMPTS = ("Name three colours.", "What is the capital of France?", "Give me a tip for sleeping better.",
           "Explain what a noun is.", "Write a short greeting for a friend.")


def logit_shifted(model_dir, out_dir, shift: float, token: str | None = None) -> str:
    """Save the model at ``model_dir`` with one token's logit raised by about ``shift`` nats (lowered when
    negative) to ``out_dir`` (a Hugging Face directory serving and the learner load); return the sha256 of
    its weights (proto.policy_store.weights_sha256). ``token``: its text, None for the end-of-turn token.

    Raises:
        ValueError: ``token`` is not exactly one token of the model's vocabulary.
    """
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    token_ids = [] if token is None else tokenizer.encode(token, add_special_tokens=False)
    if token is not None and len(token_ids) != 1:
        raise ValueError(f"{token!r} is {len(token_ids)} tokens of this vocabulary; name a single token")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    eos = model.config.eos_token_id
    shifted = eos if token is None else token_ids[0]
    with torch.no_grad():
        states = []
        for prompt in PROMPTS:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)
            out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=eos)
            hidden = model(out, output_hidden_states=True).hidden_states[-1][0]  # (tokens, hidden), after norm
            states.append(hidden[ids["input_ids"].shape[1] - 1:])
        mean = torch.cat(states).mean(0)  # (hidden,) float32
        model.get_input_embeddings().weight[shifted] += shift * mean / mean.dot(mean)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return weights_sha256(out_dir)
