"""Causal transformer backbone: pre-norm GPT blocks, rotary positions, a ring-buffer KV cache for `step`.

Rotary embeddings make attention depend only on relative positions, so the cache can hold keys at
their absolute positions and slide over a window of `window` tokens without re-encoding: `step`
attends to the last `window` cached keys of each layer. For one layer that equals a forward over the
last `window` tokens; with more layers it is sliding-window attention (each layer's cached keys were
computed from their own windows), which `forward(x, window=W)` reproduces with a banded causal mask.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate pairs of channels of x (..., l, head_dim) by angles positions * base^(-2i/head_dim)."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64, device=x.device) / half)
    angles = positions.to(x.device, torch.float64)[:, None] * freqs[None]  # float64: exact phases at long positions
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"model.d_model ({d_model}) must be divisible by model.n_heads ({n_heads})")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x):
        b, length, _ = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x, positions, window: int | None = None):
        q, k, v = self._heads(x)
        q, k = rotary(q, positions), rotary(k, positions)
        length = x.shape[1]
        if window is None or window >= length:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            i = torch.arange(length, device=x.device)
            band = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=band)
        return self.proj(y.transpose(1, 2).reshape(x.shape))

    def step(self, x, cache, pos: int):
        """x (b, 1, d); cache (k, v) of (b, heads, window, head_dim), updated in place at slot pos % window."""
        q, k, v = self._heads(x)
        p = torch.tensor([pos], device=x.device)
        q, k = rotary(q, p), rotary(k, p)
        keys, values = cache
        window = keys.shape[2]
        slot = pos % window
        keys[:, :, slot], values[:, :, slot] = k[:, :, 0], v[:, :, 0]
        filled = min(pos + 1, window)  # order inside the ring is irrelevant to attention
        y = F.scaled_dot_product_attention(q, keys[:, :, :filled], values[:, :, :filled])
        return self.proj(y.transpose(1, 2).reshape(x.shape)), (keys, values)


class TransformerBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_hidden, bias=False), nn.GELU(), nn.Linear(mlp_hidden, d_model, bias=False)
        )

    def forward(self, x, positions, window=None):
        x = x + self.attn(self.norm1(x), positions, window)
        return x + self.mlp(self.norm2(x))

    def step(self, x, cache, pos):
        y, cache = self.attn.step(self.norm1(x), cache, pos)
        x = x + y
        return x + self.mlp(self.norm2(x)), cache


class TransformerBackbone(nn.Module):
    """forward(x) over a sequence (causal); step(x_t, state) with a KV cache of the last `window` tokens."""

    def __init__(
        self, d_model: int, n_layers: int, n_heads: int, mlp_hidden: int, window: int, checkpoint_layers: bool = False
    ):
        super().__init__()
        self.window = int(window)
        self.checkpoint_layers = checkpoint_layers  # keep only layer inputs for backward: long contexts
        self.layers = nn.ModuleList(TransformerBlock(d_model, n_heads, mlp_hidden) for _ in range(n_layers))
        self.norm_f = nn.LayerNorm(d_model)

    def forward(self, x, window: int | None = None):
        positions = torch.arange(x.shape[1], device=x.device)
        for layer in self.layers:
            if self.checkpoint_layers and torch.is_grad_enabled():
                x = checkpoint(layer, x, positions, window, use_reentrant=False)
            else:
                x = layer(x, positions, window)
        return self.norm_f(x)

    def init_state(self, batch: int, device=None):
        attn = self.layers[0].attn
        shape = (batch, attn.n_heads, self.window, attn.head_dim)
        dtype = attn.qkv.weight.dtype
        return {
            "pos": 0,
            "kv": [
                (torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
                for _ in self.layers
            ],
        }

    def step(self, x, state):
        pos, kv = state["pos"], []
        x = x[:, None]
        for layer, cache in zip(self.layers, state["kv"]):
            x, cache = layer.step(x, cache, pos)
            kv.append(cache)
        return self.norm_f(x[:, 0]), {"pos": pos + 1, "kv": kv}


def transformer_layer_params(d_model: int, mlp_hidden: int) -> int:
    return 4 * d_model * d_model + 2 * d_model * mlp_hidden + 4 * d_model
