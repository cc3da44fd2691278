"""Routing maths and batched dispatch of the Mixture-of-Experts feed-forward layer."""

from __future__ import annotations

import pytest
import torch

from model_service.moe import MixtureOfExperts, load_balancing_loss, route


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(7)


def test_top2_picks_the_two_highest_scores_and_weights_sum_to_one() -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.5, 0.0, 0.3, -0.2, 0.9], [3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.9]])

    routing = route(logits, top_k=2)

    assert routing.experts.tolist() == [[1, 3], [0, 7]]
    assert torch.allclose(routing.weights.sum(dim=-1), torch.ones(2))
    probabilities = logits.softmax(dim=-1)
    expected = probabilities[0, [1, 3]] / probabilities[0, [1, 3]].sum()
    assert torch.allclose(routing.weights[0], expected)
    # The seed's mistake divided by a sum over the wrong axis; ours is per token.
    assert routing.weights[1, 0] > routing.weights[1, 1] > 0.45


def test_load_balancing_loss_is_1_when_even_and_grows_when_collapsed() -> None:
    tokens, experts = 64, 8
    even = route(torch.zeros(tokens, experts) + torch.eye(experts).repeat(tokens // experts, 1) * 1e-3, top_k=2)
    collapsed = route(torch.tensor([[10.0, 9.0] + [0.0] * 6] * tokens), top_k=2)

    assert load_balancing_loss(even, experts).item() == pytest.approx(1.0, abs=0.01)
    assert load_balancing_loss(collapsed, experts).item() > 3.5


def _reference(moe: MixtureOfExperts, x: torch.Tensor) -> torch.Tensor:
    """Every token through its two experts one at a time: slow, obviously right."""
    routing = route(moe.router(x), moe.top_k)
    out = torch.zeros_like(x)
    for token in range(x.shape[0]):
        for choice in range(moe.top_k):
            expert = moe.experts[int(routing.experts[token, choice])]
            out[token] += routing.weights[token, choice] * expert(x[token : token + 1])[0]
    return out


def test_batched_dispatch_equals_per_token_reference() -> None:
    moe = MixtureOfExperts(16, 32, num_experts=8, top_k=2).eval()
    x = torch.randn(40, 16)

    with torch.no_grad():
        assert torch.allclose(moe(x), _reference(moe, x), atol=1e-5)


def test_inference_never_drops_tokens_so_batch_mates_do_not_change_an_answer() -> None:
    moe = MixtureOfExperts(16, 32, num_experts=8, top_k=2, capacity_factor=0.25).eval()
    alone = torch.randn(1, 16)
    crowd = torch.cat([alone, alone.repeat(63, 1) + 0.01 * torch.randn(63, 16)])

    with torch.no_grad():
        assert torch.allclose(moe(crowd)[0], moe(alone)[0], atol=1e-5)
    assert moe.dropped_slots == 0


def test_training_capacity_drops_overflow_and_reports_it() -> None:
    moe = MixtureOfExperts(16, 32, num_experts=8, top_k=2, capacity_factor=0.5).train()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0  # every token prefers expert 0
    x = torch.randn(32, 16).abs()

    moe(x)

    assert moe.capacity(32) == 4  # ceil(0.5 x 32 tokens x 2 choices / 8 experts)
    assert moe.dropped_slots >= 32 - 4
    assert moe.dropped_slots > 0
    assert moe.aux_loss.item() > 1.0


def test_padding_is_not_routed() -> None:
    moe = MixtureOfExperts(16, 32, num_experts=8, top_k=2).eval()
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[True, True, True, False, False], [True, False, False, False, False]])

    with torch.no_grad():
        out = moe(x, mask)

    assert torch.equal(out[~mask], torch.zeros(6, 16))
    with torch.no_grad():
        assert torch.allclose(out[0, :3], moe(x[0, :3]), atol=1e-6)


def test_gradients_reach_router_and_only_chosen_experts() -> None:
    moe = MixtureOfExperts(16, 32, num_experts=8, top_k=2).train()
    x = torch.randn(4, 16)

    (moe(x).sum() + moe.aux_loss).backward()

    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    chosen = set(route(moe.router(x), 2).experts.flatten().tolist())
    for index, expert in enumerate(moe.experts):
        touched = expert.up.weight.grad is not None and expert.up.weight.grad.abs().sum() > 0
        assert touched == (index in chosen)


@pytest.mark.parametrize(("top_k", "experts"), [(0, 8), (9, 8)])
def test_invalid_top_k_is_refused(top_k: int, experts: int) -> None:
    with pytest.raises(ValueError, match="top_k must be between 1 and num_experts"):
        MixtureOfExperts(16, 32, num_experts=experts, top_k=top_k)
