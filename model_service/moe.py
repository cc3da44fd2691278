"""A Mixture-of-Experts feed-forward layer: top-k routing, tokens dispatched to experts in batches.

Each token goes to the `top_k` experts its router scores highest; their outputs are mixed with
the router probabilities renormalised over the chosen experts only (so they sum to 1 per token).
Dispatch sorts token slots by expert and runs each expert once on all of its tokens: a loop over
the experts, never over samples or tokens. In training a capacity factor caps how many tokens an
expert takes (overflow slots are dropped, the usual Switch/GShard trade) and a load-balancing
loss keeps the router from collapsing onto a few experts. At inference nothing is dropped:
a request's answer must not depend on which other requests share its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the PyTorch convention)

__all__ = ["ExpertFeedForward", "MixtureOfExperts", "Routing", "route"]


class ExpertFeedForward(nn.Module):
    """One expert: the transformer's dense feed-forward block, built from `nn.Linear` so that
    dynamic INT8 quantization reaches it."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.up = nn.Linear(hidden, intermediate)
        self.down = nn.Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


@dataclass(frozen=True)
class Routing:
    """Which experts each token goes to, and with what weight."""

    experts: torch.Tensor
    """(tokens, top_k) expert indices, best first."""
    weights: torch.Tensor
    """(tokens, top_k) mixing weights; each row sums to 1."""
    probabilities: torch.Tensor
    """(tokens, experts) the router's full softmax, for the load-balancing loss."""


def route(logits: torch.Tensor, top_k: int) -> Routing:
    """Top-k routing with weights renormalised over the chosen experts.

    Renormalising the top-k softmax probabilities (not a softmax over all experts followed by
    division by an unrelated sum) makes each token's weights sum to exactly 1.
    """
    probabilities = logits.softmax(dim=-1)
    top_probabilities, experts = probabilities.topk(top_k, dim=-1)
    weights = top_probabilities / top_probabilities.sum(dim=-1, keepdim=True)
    return Routing(experts=experts, weights=weights, probabilities=probabilities)


def load_balancing_loss(routing: Routing, num_experts: int) -> torch.Tensor:
    """Switch Transformer's auxiliary loss: num_experts * sum_e(fraction_e * mean_probability_e).

    It is 1.0 when tokens and probability mass are spread evenly, and grows as the router
    concentrates on few experts.
    """
    assignments = F.one_hot(routing.experts, num_experts).sum(dim=1).float()  # (tokens, experts)
    fraction = assignments.mean(dim=0) / routing.experts.shape[1]
    mean_probability = routing.probabilities.mean(dim=0)
    return num_experts * torch.sum(fraction * mean_probability)


class MixtureOfExperts(nn.Module):
    """Drop-in replacement for a transformer block's feed-forward layer."""

    def __init__(
        self,
        hidden: int,
        intermediate: int,
        *,
        num_experts: int = 8,
        top_k: int = 2,
        capacity_factor: float = 1.25,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be between 1 and num_experts ({num_experts}), got {top_k}")
        if capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be > 0, got {capacity_factor}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.router = nn.Linear(hidden, num_experts, bias=False)
        # Small logits at first: BERT-style hidden states carry a few very large dimensions, and a
        # default-initialised router would send nearly every token to one expert from step one.
        nn.init.normal_(self.router.weight, std=0.02)
        self.experts = nn.ModuleList(ExpertFeedForward(hidden, intermediate) for _ in range(num_experts))
        self.aux_loss: torch.Tensor = torch.zeros(())
        """Load-balancing loss of the last training forward pass (0 at inference)."""
        self.dropped_slots = 0
        """Token slots dropped by the capacity limit in the last training forward pass."""

    def train(self, mode: bool = True) -> MixtureOfExperts:
        # Drop the last training step's loss (and the graph it holds) when switching modes, so an
        # eval-mode model can be deep-copied (quantize_dynamic copies the model).
        self.aux_loss = torch.zeros(())
        self.dropped_slots = 0
        return super().train(mode)

    @property
    def expert_list(self) -> list[ExpertFeedForward]:
        return [cast(ExpertFeedForward, expert) for expert in self.experts]

    def capacity(self, tokens: int) -> int:
        """Most token slots one expert takes in training: capacity_factor x its even share."""
        return max(1, math.ceil(self.capacity_factor * tokens * self.top_k / self.num_experts))

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`x` is (..., hidden); `token_mask` (same leading shape, True = real token) keeps
        padding out of routing, capacity and the load-balancing loss."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        out = torch.zeros_like(flat)
        if token_mask is not None:
            positions = token_mask.reshape(-1).nonzero(as_tuple=True)[0]
            tokens = flat[positions]
        else:
            positions = None
            tokens = flat

        routing = route(self.router(tokens), self.top_k)
        # One slot per (token, choice); sort slots by expert so each expert sees a contiguous run.
        slot_expert = routing.experts.reshape(-1)
        slot_token = torch.arange(tokens.shape[0], device=x.device).repeat_interleave(self.top_k)
        slot_weight = routing.weights.reshape(-1)
        order = slot_expert.argsort(stable=True)
        slot_expert, slot_token, slot_weight = slot_expert[order], slot_token[order], slot_weight[order]
        counts = torch.bincount(slot_expert, minlength=self.num_experts).tolist()

        mixed = torch.zeros_like(tokens)
        capacity = self.capacity(tokens.shape[0]) if self.training else None
        dropped = 0
        start = 0
        for expert_index, count in enumerate(counts):
            if count == 0:
                continue
            end = start + count
            taken = end if capacity is None else start + min(count, capacity)
            dropped += end - taken
            chosen = slot_token[start:taken]
            expert_out = self.expert_list[expert_index](tokens[chosen])
            mixed.index_add_(0, chosen, expert_out * slot_weight[start:taken, None].to(expert_out.dtype))
            start = end

        if self.training:
            self.aux_loss = load_balancing_loss(routing, self.num_experts)
            self.dropped_slots = dropped
        else:
            self.aux_loss = torch.zeros((), device=x.device)
            self.dropped_slots = 0
        if positions is None:
            return mixed.reshape(shape)
        out[positions] = mixed
        return out.reshape(shape)
