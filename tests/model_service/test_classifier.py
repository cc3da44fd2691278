"""The intent classifier: shapes, padding, the pretrained load and its sparse upcycling."""

from __future__ import annotations

import pytest
import torch

from model_service.classifier import ClassifierConfig, IntentClassifier
from model_service.pretrained import TextEncoder, minilm_weights
from tests.model_service.conftest import tiny_config


def test_logits_per_text_and_padding_does_not_change_them(tiny_model: IntentClassifier) -> None:
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    mask = (ids != 0).long()

    with torch.no_grad():
        batched = tiny_model(ids, mask)
        alone = tiny_model(ids[:1, :3], mask[:1, :3])

    assert batched.shape == (2, 5)
    assert torch.allclose(batched[0], alone[0], atol=1e-5)


def test_a_sequence_longer_than_the_models_positions_is_cut_to_them(tiny_model: IntentClassifier) -> None:
    """The tokenizer may keep more tokens (64) than a small model has positions (32): it answers, on
    the positions it has, instead of failing every long query with an IndexError (a 500)."""
    positions = tiny_model.config.max_positions
    ids = torch.arange(1, 2 * positions + 1).unsqueeze(0)
    mask = torch.ones_like(ids)

    with torch.no_grad():
        long = tiny_model(ids, mask)
        cut = tiny_model(ids[:, :positions], mask[:, :positions])

    assert torch.equal(long, cut)


def test_dense_config_has_no_experts_and_moe_adds_their_parameters() -> None:
    dense = IntentClassifier(tiny_config(num_experts=0))
    moe = IntentClassifier(tiny_config(num_experts=8))

    expert_params = (24 * 48 + 48) + (48 * 24 + 24)  # up and down projections
    router_params = 24 * 8
    assert moe.parameter_count() - dense.parameter_count() == 2 * (7 * expert_params + router_params)
    assert dense.aux_loss().item() == 0.0


def test_aux_loss_is_collected_from_every_moe_layer_in_training(tiny_model: IntentClassifier) -> None:
    tiny_model.train()
    ids = torch.randint(1, 100, (4, 6))

    tiny_model(ids, torch.ones_like(ids))

    assert tiny_model.aux_loss().item() >= 2.0 * 0.99  # two layers, each >= ~1


@pytest.fixture(scope="module")
def minilm() -> dict[str, torch.Tensor]:
    return minilm_weights()


def test_upcycled_moe_computes_exactly_what_the_pretrained_dense_encoder_computes(minilm) -> None:
    encoder = TextEncoder()
    batch = encoder(["I am still waiting on my card?", "How do I top up by card?"])
    dense = IntentClassifier.from_bert(ClassifierConfig(num_labels=3, num_experts=0), minilm).eval()
    moe = IntentClassifier.from_bert(ClassifierConfig(num_labels=3), minilm).eval()

    with torch.no_grad():
        a = dense.encode(batch.input_ids, batch.attention_mask)
        b = moe.encode(batch.input_ids, batch.attention_mask)

    assert torch.allclose(a, b, atol=1e-5)


def test_pretrained_encoder_separates_related_from_unrelated_queries(minilm) -> None:
    encoder = TextEncoder()
    model = IntentClassifier.from_bert(ClassifierConfig(num_labels=3, num_experts=0), minilm).eval()
    batch = encoder(["my card has not arrived yet", "when will my new card be delivered", "play some jazz music"])

    with torch.no_grad():
        embeddings = torch.nn.functional.normalize(model.encode(batch.input_ids, batch.attention_mask), dim=-1)

    similar = embeddings[0] @ embeddings[1]
    unrelated = embeddings[0] @ embeddings[2]
    assert similar > unrelated + 0.2


def test_more_layers_than_the_checkpoint_is_refused(minilm) -> None:
    with pytest.raises(ValueError, match="checkpoint has 6 layers, config asks for 7"):
        IntentClassifier.from_bert(ClassifierConfig(num_labels=3, layers=7), minilm)


def test_text_encoder_pads_to_the_longest_and_truncates_at_the_limit() -> None:
    encoder = TextEncoder(max_tokens=8)

    batch = encoder(["short", "a much longer query about my card that keeps going and going"])

    assert batch.input_ids.shape == (2, 8)
    assert batch.lengths[1] == 8
    assert batch.attention_mask[0].sum().item() == batch.lengths[0] < 8
