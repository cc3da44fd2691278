"""The intent classifier: a BERT-style encoder whose feed-forward layers can be Mixtures of Experts.

The full model starts from the pretrained MiniLM-L6 encoder and turns each dense feed-forward
layer into 8 experts by sparse upcycling (every expert a copy of the dense layer, a fresh router),
so at initialisation it computes exactly what the dense encoder computed and training only has to
teach the experts to differ. The light model is the same class with fewer, dense layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from model_service.attention import SelfAttention
from model_service.moe import ExpertFeedForward, MixtureOfExperts

__all__ = ["Block", "ClassifierConfig", "IntentClassifier"]


@dataclass(frozen=True)
class ClassifierConfig:
    num_labels: int
    """Intents the head scores."""
    vocab_size: int = 30522
    """WordPiece vocabulary of the MiniLM tokenizer."""
    hidden: int = 384
    """Width of the residual stream (what structured pruning narrows)."""
    attention_dim: int = 384
    """Width inside attention (heads x head size); independent of `hidden` so pruning keeps heads."""
    heads: int = 12
    layers: int = 6
    intermediate: int = 1536
    """Feed-forward (per expert) inner width."""
    max_positions: int = 512
    num_experts: int = 8
    """Experts per feed-forward layer; 0 makes the layers dense."""
    top_k: int = 2
    capacity_factor: float = 1.25
    """Training-time expert capacity over an even share; inference never drops tokens."""
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12

    def replace(self, **changes: object) -> ClassifierConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


class Block(nn.Module):
    """Post-LayerNorm transformer block, as BERT and MiniLM are trained."""

    attention: SelfAttention
    attention_norm: nn.LayerNorm
    feed_forward: MixtureOfExperts | ExpertFeedForward
    feed_forward_norm: nn.LayerNorm

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config.hidden, config.attention_dim, config.heads, dropout=config.dropout)
        self.attention_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        if config.num_experts:
            self.feed_forward = MixtureOfExperts(
                config.hidden,
                config.intermediate,
                num_experts=config.num_experts,
                top_k=config.top_k,
                capacity_factor=config.capacity_factor,
            )
        else:
            self.feed_forward = ExpertFeedForward(config.hidden, config.intermediate)
        self.feed_forward_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, mask)))
        if isinstance(self.feed_forward, MixtureOfExperts):
            transformed = self.feed_forward(x, mask)
        else:
            transformed = self.feed_forward(x)
        return self.feed_forward_norm(x + self.dropout(transformed))


class IntentClassifier(nn.Module):
    """Token ids in, intent logits out. Mean pooling over real tokens, then a linear head."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden, padding_idx=0)
        self.position_embeddings = nn.Embedding(config.max_positions, config.hidden)
        self.type_embedding = nn.Parameter(torch.zeros(config.hidden))
        """BERT's token-type embedding for segment 0; single-segment inputs only ever use it."""
        self.embedding_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.head = nn.Linear(config.hidden, config.num_labels)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) ids and mask -> (batch, hidden) sentence embeddings. A sequence longer than the
        model has positions for is cut to them (the tokenizer's own limit may be the longer one)."""
        limit = self.position_embeddings.num_embeddings
        input_ids, attention_mask = input_ids[:, :limit], attention_mask[:, :limit]
        mask = attention_mask.bool()
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None] + self.type_embedding
        x = self.dropout(self.embedding_norm(x))
        for block in self.block_list:
            x = block(x, mask)
        weights = mask.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(input_ids, attention_mask))

    @property
    def block_list(self) -> list[Block]:
        return [cast(Block, block) for block in self.blocks]

    def aux_loss(self) -> torch.Tensor:
        """Sum of the MoE layers' load-balancing losses from the last forward pass."""
        losses = [m.aux_loss for m in self.modules() if isinstance(m, MixtureOfExperts)]
        return torch.stack(losses).sum() if losses else torch.zeros(())

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_bert(cls, config: ClassifierConfig, weights: Mapping[str, torch.Tensor]) -> IntentClassifier:
        """Initialise from a BERT-format encoder (MiniLM's `model.safetensors`).

        Layers beyond the checkpoint's are refused; fewer layers take the first ones. Dense
        feed-forward weights are copied into every expert (sparse upcycling); the router and the
        classification head start fresh.
        """
        model = cls(config)
        available = len({k.split(".")[2] for k in weights if k.startswith("encoder.layer.")})
        if config.layers > available:
            raise ValueError(f"checkpoint has {available} layers, config asks for {config.layers}")
        with torch.no_grad():
            model.word_embeddings.weight.copy_(weights["embeddings.word_embeddings.weight"])
            model.position_embeddings.weight.copy_(
                weights["embeddings.position_embeddings.weight"][: config.max_positions]
            )
            model.type_embedding.copy_(weights["embeddings.token_type_embeddings.weight"][0])
            _copy_norm(model.embedding_norm, weights, "embeddings.LayerNorm")
            for index, block in enumerate(model.block_list):
                prefix = f"encoder.layer.{index}"
                attention = block.attention
                for ours, theirs in (
                    (attention.query, "attention.self.query"),
                    (attention.key, "attention.self.key"),
                    (attention.value, "attention.self.value"),
                    (attention.output, "attention.output.dense"),
                ):
                    _copy_linear(ours, weights, f"{prefix}.{theirs}")
                _copy_norm(block.attention_norm, weights, f"{prefix}.attention.output.LayerNorm")
                experts = (
                    block.feed_forward.expert_list
                    if isinstance(block.feed_forward, MixtureOfExperts)
                    else [block.feed_forward]
                )
                for expert in experts:
                    _copy_linear(expert.up, weights, f"{prefix}.intermediate.dense")
                    _copy_linear(expert.down, weights, f"{prefix}.output.dense")
                _copy_norm(block.feed_forward_norm, weights, f"{prefix}.output.LayerNorm")
        return model


def _copy_linear(layer: nn.Linear, weights: Mapping[str, torch.Tensor], prefix: str) -> None:
    layer.weight.copy_(weights[f"{prefix}.weight"])
    layer.bias.copy_(weights[f"{prefix}.bias"])


def _copy_norm(layer: nn.LayerNorm, weights: Mapping[str, torch.Tensor], prefix: str) -> None:
    layer.weight.copy_(weights[f"{prefix}.weight"])
    layer.bias.copy_(weights[f"{prefix}.bias"])
