"""Mamba-1 backbone: pre-norm residual blocks of the S6 mixer, with mamba_ssm's parameter names and shapes.

`Mamba` mirrors `mamba_ssm.modules.mamba_simple.Mamba` (in_proj, conv1d, x_proj, dt_proj, A_log, D,
out_proj and their initialisation), so a state_dict loads into either. `MambaBackbone` mirrors
mamba_ssm's `MixerModel` layout (layers.i.mixer, layers.i.norm, norm_f).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels, mamba_native
from .recompute import checkpointed
from .scan import selective_scan


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x, impl: str):
        return kernels.rms_norm(x, self.weight, self.eps, impl)


class Mamba(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        # Initialisation as in mamba_ssm: dt ~ logU[dt_min, dt_max] through an inverse softplus bias.
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(
            min=dt_init_floor
        )
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def _ssm_inputs(self, x):
        """x (..., d_inner) -> dt (pre-bias), B, C from x_proj."""
        return torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)

    def forward(self, hidden: torch.Tensor, impl: str) -> torch.Tensor:
        """hidden (b, l, d_model) -> (b, l, d_model), over the whole sequence, on the kernels `impl`
        (`kernels.choose`'s pick, made once per backbone forward). Activations stay channel-last,
        (b, l, d_inner), as the projections make them; the scan takes (b, d_inner, l) views of them
        (mamba_ssm's layout, transposed without copying)."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (b, l, d_inner) each
        x = kernels.conv_silu(x, self.conv1d.weight, self.conv1d.bias, impl)
        dt, B, C = self._ssm_inputs(x)
        dt = F.linear(dt, self.dt_proj.weight)  # (b, l, d_inner); the bias is added in the scan
        y = selective_scan(
            x.transpose(1, 2),
            dt.transpose(1, 2),
            -torch.exp(self.A_log),
            B.transpose(1, 2),
            C.transpose(1, 2),
            self.D,
            z=z.transpose(1, 2),
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
            impl=impl,
        )
        return self.out_proj(y.transpose(1, 2))

    def init_state(self, batch: int, device=None):
        dtype = self.in_proj.weight.dtype
        return (
            torch.zeros(batch, self.d_inner, self.d_conv, device=device, dtype=dtype),
            torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=dtype),
        )

    def step(self, hidden: torch.Tensor, state):
        """One token: hidden (b, d_model), state (conv_state, ssm_state) -> (out, new state). Constant cost."""
        conv_state, ssm_state = state
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        conv_state = torch.cat([conv_state[:, :, 1:], x[:, :, None]], dim=-1)
        x = F.silu((conv_state * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)
        dt, B, C = self._ssm_inputs(x)
        dt = F.softplus(dt @ self.dt_proj.weight.T + self.dt_proj.bias)
        A = -torch.exp(self.A_log)
        ssm_state = torch.exp(dt[..., None] * A) * ssm_state + (dt * x)[..., None] * B[:, None, :]
        y = (ssm_state * C[:, None, :]).sum(-1) + self.D * x
        return self.out_proj(y * F.silu(z)), (conv_state, ssm_state)


class Block(nn.Module):
    def __init__(self, d_model: int, **mixer_kwargs):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.mixer = Mamba(d_model, **mixer_kwargs)

    def forward(self, x, impl: str):
        return x + self.mixer(self.norm(x, impl), impl)

    def step(self, x, state, impl: str):
        y, state = self.mixer.step(self.norm(x, impl), state)
        return x + y, state


class MambaBackbone(nn.Module):
    """forward(x) over a sequence; step(x_t, state) with a constant-size recurrent state."""

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        checkpoint_layers: bool = False,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            Block(d_model, d_state=d_state, d_conv=d_conv, expand=expand) for _ in range(n_layers)
        )
        self.norm_f = RMSNorm(d_model)
        self.d_state = d_state
        self.checkpoint_layers = checkpoint_layers  # keep only layer inputs for backward: long contexts

    def kernels(self, x: torch.Tensor) -> str:
        """The implementation of Mamba's hot operations for inputs like x: the one decision of a forward
        (or a step), passed down to every layer."""
        return kernels.choose(x, self.d_state)

    def forward(self, x):
        impl = self.kernels(x)
        for layer in self.layers:
            if not (self.checkpoint_layers and torch.is_grad_enabled()):
                x = layer(x, impl)
            elif mamba_native.supported(layer, x, impl):  # the fast path: a backward that reruns only what it needs
                x = mamba_native.checkpointed_block(layer, x)
            else:
                x = checkpointed(layer, x, impl)
        return self.norm_f(x, impl)

    def init_state(self, batch: int, device=None):
        return [layer.mixer.init_state(batch, device) for layer in self.layers]

    def step(self, x, state):
        impl, new_state = self.kernels(x), []
        for layer, s in zip(self.layers, state):
            x, s = layer.step(x, s, impl)
            new_state.append(s)
        return self.norm_f(x, impl), new_state


def mamba_layer_params(d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2) -> int:
    """Parameters of one Block, computed from the shapes above (used to size the transformer to match)."""
    di, r = expand * d_model, math.ceil(d_model / 16)
    return (
        d_model * 2 * di
        + di * d_conv
        + di
        + di * (r + 2 * d_state)
        + r * di
        + di
        + di * d_state
        + di
        + di * d_model
        + d_model
    )
