"""The reward model on the real bundled SFT model: chat template (a cut-off response without its end of
turn), masks from lengths, last-token head, the trunk/top split and its cache, overlays, micro-batched
steps equal to one-pass steps, and the direction of a training step."""

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


def test_a_cut_off_response_is_encoded_without_the_end_of_turn(encoder):
    end_of_turn = encoder.tokenizer.convert_tokens_to_ids("<|im_end|>")
    finished = encoder.encode(MESSAGES, "The capital of France is Paris.", "stop")
    cut = encoder.encode(MESSAGES, "The capital of France is", "length")
    assert encoder.turn_end == "<|im_end|>\n"
    assert encoder.tokenizer.decode(finished).endswith("is Paris.<|im_end|>\n")
    assert encoder.tokenizer.decode(cut).endswith("<|im_start|>assistant\nThe capital of France is")
    assert finished[-2] == end_of_turn and cut[-1] != end_of_turn
    # The same text: one token sequence is the other plus the closing "<|im_end|>\n" (2 tokens).
    same_text = encoder.encode(MESSAGES, "The capital of France is", "stop")
    assert same_text[: len(cut)] == cut and len(same_text) == len(cut) + 2
    assert encoder.encode(MESSAGES, "Paris", "abort") == encoder.encode(MESSAGES, "Paris", "length")
    assert encoder.encode(MESSAGES, "Paris", "") == encoder.encode(MESSAGES, "Paris")  # unset: finished
    (encoded,) = encoder.encode_all([(MESSAGES, "Paris", "length")])
    assert encoded == encoder.encode(MESSAGES, "Paris", "length")


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


def test_trunk_then_top_is_the_forward_pass_whatever_the_padding(probe, encoder):
    """The frozen trunk's output of a sequence, cut to its length and re-padded into another batch, gives
    the same reward through the top layers: what makes caching it per sequence exact."""
    short = encoder.encode(MESSAGES, "Paris.")
    long = encoder.encode(MESSAGES, "The capital of France is Paris, a city on the Seine known for food.")
    ids, lengths = encoder.collate([short, long])
    with torch.inference_mode():
        full = probe(ids, lengths)
        hidden = probe.trunk(ids, lengths)  # (2, T, H)
        alone = probe.top(hidden[:1, : len(short)], lengths[:1])
        garbage = torch.cat([hidden[:1, : len(short)], torch.randn(1, 7, hidden.shape[2])], dim=1)
        padded = probe.top(garbage, lengths[:1])  # whatever follows the length is ignored
    torch.testing.assert_close(alone, full[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded, full[:1], atol=1e-5, rtol=1e-5)
    assert probe.boundary == probe.backbone.config.num_hidden_layers - 4


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
        small.encode_all([(MESSAGES, "Paris."), (MESSAGES, "word " * 50, "length")])
    assert err.value.index == 1 and err.value.tokens > 60


def test_training_steps_move_rewards_toward_the_votes(model_dir, encoder):
    model = load_reward_model(model_dir, trainable_layers=1)
    trainer = Trainer(model, encoder, learning_rate=1e-4, head_learning_rate=1e-3, pairwise_weight=1.0)
    good = Example("f1", "r1", MESSAGES, "Paris.", up=True)
    bad = Example("f2", "r2", MESSAGES, "Berlin is the capital of France, obviously", up=False)
    for _ in range(3):
        result = trainer.step([good, bad], [Pair(good, bad)])
    assert result.votes == 2 and result.pairs == 1
    r_good, r_bad = trainer.score([good, bad]).tolist()
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


def test_a_micro_batched_step_equals_a_one_pass_step(model_dir, encoder):
    """Votes, pairs and a response shared by two votes, trained in micro-batches of one sequence (the two
    responses of each pair kept together) or in one pass: the same losses and the same weights after."""
    texts = ["Paris.", "Berlin, I think", "It is Paris, the largest city of France.", "Lyon", "Paris!"]
    votes = [Example(f"f{i}", f"r{i}", MESSAGES, t, up=i % 2 == 0) for i, t in enumerate(texts)]
    votes.append(Example("f-again", "r0", MESSAGES, "Paris.", up=True))  # another user, same response
    cut = Example("f-cut", "r-cut", MESSAGES, "The capital is", up=False, finish_reason="length")
    votes.append(cut)
    pairs = [Pair(votes[0], votes[1]), Pair(votes[4], cut)]
    results, gradients = [], []
    for budget in (1, 10_000):
        model = load_reward_model(model_dir, trainable_layers=1)
        torch.manual_seed(0)
        with torch.no_grad():
            model.head.weight.copy_(torch.randn_like(model.head.weight) * 0.05)
        trainer = Trainer(model, encoder, 1e-4, 1e-3, 1.0, micro_batch_tokens=budget)
        results.append(trainer.step(votes, pairs))
        # The accumulated gradients (kept after the step). Not the weights: AdamW's first step moves each
        # by ±lr whatever its gradient's size, so float noise on a near-zero gradient flips it.
        gradients.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
        if budget == 1:
            assert len(trainer.cache) == 6  # each distinct sequence's trunk output, computed once
            trainer.score(votes)
            assert trainer.cache.hits >= len(votes)  # scoring them again reads the cache
    (small, one), (g_small, g_one) = results, gradients
    assert (small.votes, small.pairs) == (one.votes, one.pairs) == (7, 2)
    assert small.pointwise_loss == pytest.approx(one.pointwise_loss, rel=1e-5)
    assert small.pairwise_loss == pytest.approx(one.pairwise_loss, rel=1e-5)
    assert max(g.abs().max() for g in g_one) > 1e-2  # a real gradient
    for a, b in zip(g_small, g_one, strict=True):  # float32 sums in another order: ≈ 1e-5 apart
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-3)
