"""Multi-head self-attention on `torch.nn.functional.scaled_dot_product_attention`.

SDPA picks the FlashAttention or memory-efficient kernel on CUDA and a fused kernel on CPU, so
attention memory does not grow with the square of the sequence length where those kernels run.
Written out here instead of `nn.TransformerEncoderLayer`, which crashes in eval mode after
dynamic quantization (pytorch#109987), and so the projections stay `nn.Linear` for INT8.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the PyTorch convention)

__all__ = ["SelfAttention"]


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, attention_dim: int, heads: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        if attention_dim % heads:
            raise ValueError(f"attention_dim {attention_dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = attention_dim // heads
        self.query = nn.Linear(hidden, attention_dim)
        self.key = nn.Linear(hidden, attention_dim)
        self.value = nn.Linear(hidden, attention_dim)
        self.output = nn.Linear(attention_dim, hidden)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """`x` is (batch, seq, hidden); `key_mask` (batch, seq) is True for real tokens."""
        batch, seq, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, self.heads, self.head_dim).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            heads(self.query(x)),
            heads(self.key(x)),
            heads(self.value(x)),
            attn_mask=key_mask[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.output(attended.transpose(1, 2).reshape(batch, seq, -1))
