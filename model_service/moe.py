"""A Mixture-of-Experts feed-forward layer: top-k routing, tokens dispatched to experts in batches.

Each token goes to the `top_k` experts its router scores highest; their outputs are mixed with
the router probabilities renormalised over the chosen experts only (so they sum to 1 per token).
Dispatch runs each expert once on all of its tokens: a loop over the experts, never over samples
or tokens. In training a capacity factor caps how many tokens an expert takes (overflow slots are
dropped, the usual Switch/GShard trade) and a load-balancing loss keeps the router from
collapsing onto a few experts. At inference nothing is dropped: a request's answer must not
depend on which other requests share its batch.

Dispatch is written with gathers only (no scatter, no sort, no Python number taken from a
tensor), so the same forward exports to ONNX with data-dependent token counts: the INT8 path on
CPU runs it in ONNX Runtime (`model_service.onnx_int8`). An exported `index_add_` became a
ScatterElements over an index expanded to every hidden unit, 15% of that graph's time.
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
        real = None if token_mask is None else token_mask.reshape(-1)
        tokens = flat if real is None else flat.index_select(0, real.nonzero().squeeze(-1))

        routing = route(self.router(tokens), self.top_k)
        # member[t, e] is 1 when token t goes to expert e; rank[t, e] is t's place among e's tokens.
        member = F.one_hot(routing.experts, self.num_experts).sum(dim=1)
        rank = member.cumsum(dim=0) - 1
        if self.training:
            member = member * (rank < self.capacity(tokens.shape[0]))
        counts = member.sum(dim=0)
        outputs = [
            expert(tokens.index_select(0, member[:, index].nonzero().squeeze(-1)))
            for index, expert in enumerate(self.expert_list)
        ]
        # The experts' outputs one after another; each (token, choice) slot reads its row back.
        stacked = torch.cat(outputs)
        kept = member.gather(1, routing.experts)
        row = (rank + (counts.cumsum(dim=0) - counts)).gather(1, routing.experts) * kept  # a dropped slot reads row 0
        weights = (routing.weights * kept).unsqueeze(-1).to(stacked.dtype)
        mixed = (stacked.index_select(0, row.reshape(-1)).reshape(*row.shape, -1) * weights).sum(dim=1)

        if self.training:
            self.aux_loss = load_balancing_loss(routing, self.num_experts)
            self.dropped_slots = int(kept.numel() - kept.sum())
        else:
            self.aux_loss = torch.zeros((), device=x.device)
            self.dropped_slots = 0
        if real is None:
            return mixed.reshape(shape)
        # Back to every position, padding as zeros: a gather from the real tokens' rows and one zero row.
        source = torch.where(real, real.long().cumsum(dim=0) - 1, tokens.shape[0])
        return torch.cat([mixed, mixed.new_zeros(1, shape[-1])]).index_select(0, source).reshape(shape)
