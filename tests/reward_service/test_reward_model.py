"""The reward model on the real bundled SFT model: chat template, masks from lengths, last-token head,
overlays, and the direction of a training step."""

import pytest
import torch

from reward_service.model import ChatEncoder, ContextTooLong, load_reward_model
from reward_service.store import Example, Pair
from reward_service.trainer import Trainer

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def probe(reward_model):
    """The session's reward model with a fixed random head (a zero head would make every test pass)."""
    generator = torch.Generator().manual_seed(0)
    head = reward_model.head
    saved = head.weight.detach().clone(), head.bias.detach().clone()
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.05)
        head.bias.fill_(0.1)
    yield reward_model
    with torch.no_grad():
        head.weight.copy_(saved[0])
        head.bias.copy_(saved[1])


def rewards(model, encoder, items) -> torch.Tensor:
    input_ids, lengths = encoder.collate([encoder.encode(m, r) for m, r in items])
    with torch.inference_mode():
        return model(input_ids, lengths)


def test_encode_uses_the_chat_template_with_the_response_as_assistant_turn(encoder):
    ids = encoder.encode(MESSAGES, "Paris.")
    text = encoder.tokenizer.decode(ids)
    assert text == encoder.tokenizer.apply_chat_template(
        [*MESSAGES, {"role": "assistant", "content": "Paris."}], tokenize=False
    )
    assert text.endswith("<|im_start|>assistant\nParis.<|im_end|>\n")
    assert ids.count(encoder.tokenizer.bos_token_id) == text.count("<|im_start|>")  # no extra BOS added


def test_padding_does_not_change_rewards(probe, encoder):
    """Masks come from lengths: the pad id (2) is also <|im_end|>, which occurs inside every sequence."""
    short = (MESSAGES, "Paris.")
    long = (MESSAGES, "The capital of France is Paris, a city on the Seine known for its museums and food.")
    alone = torch.cat([rewards(probe, encoder, [short]), rewards(probe, encoder, [long])])
    together = rewards(probe, encoder, [short, long])
    assert alone.shape == together.shape == (2,)
    assert together.dtype == torch.float32
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert abs(alone[0] - alone[1]) > 1e-3  # the head does tell the two apart


def test_reward_is_read_at_the_last_token(probe, encoder):
    ids = encoder.encode(MESSAGES, "Paris.")
    input_ids, lengths = encoder.collate([ids])
    with torch.inference_mode():
        hidden = probe.backbone(input_ids=input_ids).last_hidden_state  # (1, T, H)
        expected = probe.head(hidden[0, -1]).squeeze()
        assert probe(input_ids, lengths).item() == pytest.approx(expected.item(), abs=1e-5)


def test_only_the_top_layers_norm_and_head_train(reward_model):
    names = {n for n, p in reward_model.named_parameters() if p.requires_grad}
    layers = reward_model.backbone.config.num_hidden_layers
    assert names == reward_model.trainable_names()
    assert {"head.weight", "head.bias", "backbone.norm.weight"} <= names
    assert any(n.startswith(f"backbone.layers.{layers - 1}.") for n in names)
    assert not any(n.startswith(f"backbone.layers.{layers - 5}.") for n in names)
    assert not any("embed_tokens" in n for n in names)


def test_overlay_round_trip_and_mismatch(probe, encoder, model_dir, tmp_path):
    path = tmp_path / "overlay.safetensors"
    probe.save_overlay(path)
    restored = load_reward_model(model_dir, trainable_layers=4, overlay=path)
    items = [(MESSAGES, "Paris."), (MESSAGES, "Lyon, I think")]
    torch.testing.assert_close(
        rewards(restored, encoder, items), rewards(probe, encoder, items), atol=0, rtol=0
    )
    with pytest.raises(ValueError, match="does not match"):
        load_reward_model(model_dir, trainable_layers=2, overlay=path)


def test_context_limit_names_the_input(encoder):
    small = ChatEncoder(encoder.tokenizer, max_tokens=60)
    with pytest.raises(ContextTooLong) as err:
        small.encode_all([(MESSAGES, "Paris."), (MESSAGES, "word " * 50)])
    assert err.value.index == 1 and err.value.tokens > 60


def test_training_steps_move_rewards_toward_the_votes(model_dir, encoder):
    model = load_reward_model(model_dir, trainable_layers=1)
    trainer = Trainer(model, encoder, learning_rate=1e-4, head_learning_rate=1e-3, pairwise_weight=1.0)
    good = Example("f1", "r1", MESSAGES, "Paris.", up=True)
    bad = Example("f2", "r2", MESSAGES, "Berlin is the capital of France, obviously", up=False)
    for _ in range(3):
        result = trainer.step([good, bad], [Pair(good, bad)])
    assert result.votes == 2 and result.pairs == 1
    r_good, r_bad = trainer.score([good, bad], micro_batch=2).tolist()
    assert r_good > 0 > r_bad
    assert result.pointwise_loss < 0.69  # below log 2, the loss of the zero head it started from

    # Resuming from the saved optimiser keeps its moments but this run's configured step sizes.
    resumed = Trainer(model, encoder, learning_rate=5e-6, head_learning_rate=5e-4, pairwise_weight=1.0)
    resumed.load_optimizer_state(trainer.optimizer.state_dict())
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [5e-4, 5e-6]
    head = model.head.weight
    torch.testing.assert_close(
        resumed.optimizer.state[head]["exp_avg"], trainer.optimizer.state[head]["exp_avg"]
    )
