"""A Mamba block (RMSNorm, the S6 mixer, the residual) with layer checkpointing, its backward written
out by hand over the native kernels.

What autograd's checkpointing of a block recomputes in backward is the whole forward; this backward
recomputes only what the gradients need: the input projection, the convolution and the step sizes.
The scan's chunk states are kept from the forward (n * d / 64 numbers per token, half a block input's
worth at d_state 16), and so is x_proj's output (dt_rank + 2 n per token, a third of a block input's
worth, cheaper to keep than to rerun), so the backward
kernel starts from them and gives back the scan's output as it goes, which the output projection's
weight gradient takes; the output projection is not rerun, and the gradients of the two halves of the
input projection are written side by side, not concatenated. Both passes run over slices of the batch of at most
RECOMPUTE_TOKENS tokens, as `recompute.checkpointed`.
Used by MambaBackbone where the native kernels run (CPU, float32 or float64); elsewhere the block is
checkpointed by autograd.
"""

import torch
import torch.nn.functional as F

from . import scan_native
from .recompute import batch_slices


def _inputs(mixer, h: torch.Tensor, wT, xz_buffer: torch.Tensor, x_dbl: torch.Tensor, kept: bool):
    """The mixer's activations up to the scan, for normalised input h (b, l, d_model): the projection xz
    (written into the front of xz_buffer), the scan's input u and raw step sizes dt (b, l, d_inner), its
    x_proj output x_dbl (written into x_dbl, or there already where `kept`), and B, C as (b, 1, n, l)."""
    di, r, n = mixer.d_inner, mixer.dt_rank, mixer.d_state
    xz = torch.matmul(h, mixer.in_proj.weight.t(), out=xz_buffer[: h.shape[0]])
    u = scan_native.conv_forward(xz[..., :di], wT, mixer.conv1d.bias)
    if not kept:
        torch.matmul(u, mixer.x_proj.weight.t(), out=x_dbl)
    dt = F.linear(x_dbl[..., :r].contiguous(), mixer.dt_proj.weight)  # (MKL: 2x slower on the strided view)
    B, C = (x_dbl[..., r + i * n : r + (i + 1) * n].transpose(1, 2)[:, None] for i in (0, 1))
    return xz, u, dt, x_dbl, B, C


def _scan_args(mixer, xz, u, dt, B, C, At):
    """The scan kernels' arguments, as (b, d, l) channel-last views."""
    di = mixer.d_inner
    return (
        u.transpose(1, 2),
        dt.transpose(1, 2),
        At,
        B,
        C,
        mixer.D,
        xz[..., di:].transpose(1, 2),
        mixer.dt_proj.bias,
        True,
    )


def _buffer(x: torch.Tensor, parts: list, width: int) -> torch.Tensor:
    """One (slice, length, width) tensor for every slice's (b, l, 2 d_inner) activations: allocated once
    per pass, as glibc maps each allocation of 32 MB or more afresh and faults in every page of it."""
    return x.new_empty(parts[0].stop - parts[0].start, x.shape[1], width)


class _Block(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, block, *params):
        mixer = block.mixer
        with torch.no_grad():
            wT = mixer.conv1d.weight[:, 0].t().contiguous()
            At = (-torch.exp(mixer.A_log)).t().contiguous()
            chunks = -(-x.shape[1] // scan_native.CHUNK)
            ckpt = x.new_empty(x.shape[0], chunks, mixer.d_state, mixer.d_inner)
            x_dbl = x.new_empty(*x.shape[:2], mixer.x_proj.out_features)
            out = torch.empty_like(x)
            parts = batch_slices(*x.shape[:2])
            xz_buffer = _buffer(x, parts, 2 * mixer.d_inner)
            for part in parts:
                xs = x[part]
                h, _ = scan_native.rms_norm_forward(xs, block.norm.weight, block.norm.eps)
                xz, u, dt, _, B, C = _inputs(mixer, h, wT, xz_buffer, x_dbl[part], kept=False)
                y, _, _ = scan_native.scan_forward(*_scan_args(mixer, xz, u, dt, B, C, At), ckpt=ckpt[part])
                torch.addmm(xs.flatten(0, 1), y.flatten(0, 1), mixer.out_proj.weight.t(), out=out[part].flatten(0, 1))
        ctx.block = block
        ctx.save_for_backward(x, ckpt, x_dbl, wT, At)
        return out

    @staticmethod
    def backward(ctx, gout):
        x, ckpt, x_dbl_kept, wT, At = ctx.saved_tensors
        block = ctx.block
        mixer, norm = block.mixer, block.norm
        di, r = mixer.d_inner, mixer.dt_rank
        gout = gout.contiguous()
        grads = {name: torch.zeros_like(p) for name, p in block.named_parameters()}
        gx = torch.empty_like(x)
        with torch.no_grad():
            parts = batch_slices(*x.shape[:2])
            xz_buffer, dxz_buffer = _buffer(x, parts, 2 * di), _buffer(x, parts, 2 * di)
            for part in parts:
                xs, gs = x[part], gout[part]
                h, rs = scan_native.rms_norm_forward(xs, norm.weight, norm.eps)
                xz, u, dt, x_dbl, B, C = _inputs(mixer, h, wT, xz_buffer, x_dbl_kept[part], kept=True)
                dy = gs @ mixer.out_proj.weight
                dxz, y = dxz_buffer[: xs.shape[0]], torch.empty_like(u)
                du, ddt, _, dA, dB, dC, dD, dbias = scan_native.scan_backward(
                    *_scan_args(mixer, xz, u, dt, B, C, At), ckpt[part], dy, dz=dxz[..., di:], y=y
                )
                grads["mixer.out_proj.weight"] += gs.flatten(0, 1).t() @ y.flatten(0, 1)
                grads["mixer.A_log"] += dA.t() * At.t()  # A = -exp(A_log): dA/dA_log = A
                grads["mixer.D"] += dD
                grads["mixer.dt_proj.bias"] += dbias
                # the rank-r products with the long dimension inside: MKL runs the other order 4-8x slower
                ddt2 = ddt.flatten(0, 1)
                grads["mixer.dt_proj.weight"] += (x_dbl[..., :r].flatten(0, 1).t() @ ddt2).t()
                d_dt_low = (mixer.dt_proj.weight.t() @ ddt2.t()).t().unflatten(0, ddt.shape[:2])
                dx_dbl = torch.cat([d_dt_low, dB[:, 0], dC[:, 0]], dim=-1)
                du.flatten(0, 1).addmm_(dx_dbl.flatten(0, 1), mixer.x_proj.weight)  # (one pass over du)
                grads["mixer.x_proj.weight"] += dx_dbl.flatten(0, 1).t() @ u.flatten(0, 1)
                _, dwT, dcb = scan_native.conv_backward(xz[..., :di], wT, mixer.conv1d.bias, du, dx=dxz[..., :di])
                grads["mixer.conv1d.weight"] += dwT.t()[:, None]
                grads["mixer.conv1d.bias"] += dcb
                grads["mixer.in_proj.weight"] += dxz.flatten(0, 1).t() @ h.flatten(0, 1)
                dh = dxz @ mixer.in_proj.weight
                grads["norm.weight"] += scan_native.rms_norm_backward(xs, norm.weight, rs, dh, gs, gx[part])
        return (gx, None, *(grads[name] for name, _ in block.named_parameters()))


def supported(block, x: torch.Tensor, impl: str) -> bool:
    """Whether the native block runs for this input: the forward's kernels are the native ones and the
    block's parameters are of x's dtype."""
    return impl == "native" and all(p.dtype == x.dtype for p in block.parameters())


def checkpointed_block(block, x: torch.Tensor) -> torch.Tensor:
    """block(x) with its activations recomputed in backward (the hand-written backward above)."""
    return _Block.apply(x.contiguous(), block, *block.parameters())
