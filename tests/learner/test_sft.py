"""learner sft on the real model: both JSONL forms, loss on reply tokens falls, output loads as a policy."""

import json

import pytest
import torch

from learner.model import load_lm, load_tokenizer
from learner.settings import SFTSettings
from learner.sft import encode, read_demonstrations, response_only_loss, train

DEMOS = [
    {"messages": [{"role": "user", "content": "What colour is the sky?"}], "response": "Blue."},
    {"messages": [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "Yes."}]},
]


def _reply_loss(model_dir, demos_path) -> float:
    tokenizer, lm = load_tokenizer(model_dir), load_lm(model_dir, trainable=False)
    total = 0.0
    for messages, reply in read_demonstrations(demos_path):
        ids, n = encode(tokenizer, messages, reply, 1024)
        with torch.no_grad():
            logits = lm(input_ids=torch.tensor([ids])).logits
        total += response_only_loss(
            logits, torch.tensor([ids]), torch.tensor([len(ids)]), torch.tensor([n])
        ).item()
    return total


def test_sft_lowers_reply_loss_and_writes_a_loadable_model(tmp_path, model_dir):
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps(d) + "\n" for d in DEMOS))
    assert [reply for _, reply in read_demonstrations(demos)] == ["Blue.", "Yes."]
    out = train(
        SFTSettings(
            data=demos,
            output_dir=tmp_path / "sft",
            base_model=model_dir,
            epochs=2,
            batch_size=2,
            learning_rate=5e-5,
        )
    )
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert _reply_loss(out, demos) < _reply_loss(model_dir, demos)
    with pytest.raises(FileExistsError):
        train(SFTSettings(data=demos, output_dir=out, base_model=model_dir))


def test_a_demonstration_without_a_reply_is_rejected(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_demonstrations(bad)
