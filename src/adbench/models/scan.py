"""The selective scan of S6 (Mamba-1), with the signature and semantics of mamba_ssm's `selective_scan_fn`.

h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,   y_t = C_t h_t + D u_t,   out = y * silu(z)

`selective_scan_ref` is the plain sequential definition (the test oracle). `selective_scan` runs the
implementation it is given (`kernels.choose`'s pick for the forward that calls it): mamba_ssm's CUDA
kernel, the C kernel of `scan_native`, or the chunked PyTorch scan below, where under autograd each
chunk is checkpointed (its states are recomputed in backward), so at most one chunk of the
(batch, d_inner, length, d_state) state exists at a time and memory grows linearly, and modestly,
with length.
"""

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import kernels, scan_native

CHUNK = 64


def _expand_bc(x: torch.Tensor, d: int) -> torch.Tensor:
    """B or C as (batch or 1, d or 1, length or 1, n): (d, n) fixed, (b, n, l) variable, (b, g, n, l) grouped."""
    if x.dim() == 2:
        return x[None, :, None, :]
    if x.dim() == 3:
        return x.transpose(1, 2)[:, None]
    groups = x.shape[1]
    return x.repeat_interleave(d // groups, dim=1).transpose(2, 3)


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """Cast to the compute dtype (at least float32, as the mamba_ssm kernels do) and apply the dt bias."""
    ct = torch.promote_types(u.dtype, torch.float32)
    delta = delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    d = u.shape[1]
    return u.to(ct), delta, A.to(ct), _expand_bc(B.to(ct), d), _expand_bc(C.to(ct), d)


def _finish(y, u, D, z, dtype):
    if D is not None:
        y = y + u * D.to(y.dtype)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype)


class LinearRecurrence(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + b_t along the first axis, from h0; returns every h_t.

    Backward is the adjoint recurrence run in reverse, lam_t = g_t + a_{t+1} lam_{t+1}, which gives
    grad b_t = lam_t, grad a_t = lam_t h_{t-1} and grad h0 = a_0 lam_0: one fused multiply-add per
    step each way, with no autograd graph over time steps.
    """

    @staticmethod
    def forward(ctx, a, b, h0):  # a, b: (l, ...) contiguous; h0: (...)
        hs = torch.empty_like(b)
        h = h0
        for t in range(b.shape[0]):
            h = torch.addcmul(b[t], a[t], h, out=hs[t])
        ctx.save_for_backward(a, h0, hs)
        return hs

    @staticmethod
    def backward(ctx, grad_hs):
        a, h0, hs = ctx.saved_tensors
        grad_hs = grad_hs.contiguous()
        grad_b = torch.empty_like(grad_hs)
        lam = grad_b[-1]
        lam.copy_(grad_hs[-1])
        for t in range(grad_hs.shape[0] - 2, -1, -1):
            lam = torch.addcmul(grad_hs[t], a[t + 1], lam, out=grad_b[t])
        h_prev = torch.cat([h0[None], hs[:-1]], dim=0)
        return grad_b * h_prev, grad_b, a[0] * grad_b[0]


def _scan_chunk(u, delta, A, B, C, h):
    """One chunk: u, delta (b, d, l); B, C (b|1, d|1, l|1, n); h (b, d, n) -> y (b, d, l), last h."""
    # time-major (l, b, d, n) from the start, so that each step reads and writes contiguous memory
    delta_t = delta.permute(2, 0, 1).unsqueeze(-1)
    decay = torch.exp(delta_t * A)
    drive = (delta_t * u.permute(2, 0, 1).unsqueeze(-1)) * B.permute(2, 0, 1, 3)
    hs = LinearRecurrence.apply(decay, drive, h)
    y = (hs * C.permute(2, 0, 1, 3)).sum(-1)  # (l, b, d)
    return y.permute(1, 2, 0), hs[-1]


def scan_implementation(impl: str, u, B, C) -> str:
    """What `selective_scan` runs for these inputs on the kernels `impl`: `impl`, or 'torch' where the C
    kernel does not take them (a fixed B or C, channel groups that are not whole vector blocks)."""
    if impl not in kernels.IMPLEMENTATIONS:
        raise ValueError(f"impl={impl!r} is not one of {', '.join(kernels.IMPLEMENTATIONS)} (kernels.choose)")
    if impl == "native" and not scan_native.supports(u, B, C):
        return "torch"
    return impl


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    chunk: int = CHUNK,
    *,
    impl: str,
):
    """Memory-lean selective scan. Shapes as in mamba_ssm: u, delta, z (b, d, l); A (d, n);
    B, C (d, n) | (b, n, l) | (b, g, n, l); D, delta_bias (d,). Returns out (b, d, l) [, last_state (b, d, n)].
    `impl`: one of kernels.IMPLEMENTATIONS, as `kernels.choose` picked it for the forward that calls this
    (where the C kernel does not take these inputs, the PyTorch scan runs instead)."""
    chosen = scan_implementation(impl, u, B, C)
    if chosen == "mamba_ssm":  # CUDA kernels (tests/test_cuda.py; not exercised by the CPU suite)
        result = kernels.mamba_ssm_scan()(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        if return_last_state and B.dim() == 2:
            # mamba_ssm's kernel keeps a fixed B's state without its factor B (B multiplies in at the
            # readout) and returns it so; the state of the recurrence above is that times B
            out, last = result
            return out, last * B.to(last.dtype)
        return result
    if chosen == "native":
        out, last = scan_native.native_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        return (out, last) if return_last_state else out
    return _selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk)


def _selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk):
    dtype = u.dtype
    u32, delta, A32, Bx, Cx = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    b, d, length = u32.shape
    h = u32.new_zeros(b, d, A.shape[1])
    ys = []
    use_ckpt = torch.is_grad_enabled() and any(t.requires_grad for t in (u32, delta, A32, Bx, Cx))
    for s in range(0, length, chunk):
        e = min(s + chunk, length)
        args = (
            u32[:, :, s:e],
            delta[:, :, s:e],
            A32,
            Bx if Bx.shape[2] == 1 else Bx[:, :, s:e],
            Cx if Cx.shape[2] == 1 else Cx[:, :, s:e],
            h,
        )
        y, h = checkpoint(_scan_chunk, *args, use_reentrant=False) if use_ckpt else _scan_chunk(*args)
        ys.append(y)
    out = _finish(torch.cat(ys, dim=-1), u32, D, z, dtype)
    return (out, h) if return_last_state else out


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The recurrence written step by step over the full sequence, in the input dtype: the oracle."""
    dtype = u.dtype
    delta = delta + delta_bias[None, :, None] if delta_bias is not None else delta
    delta = F.softplus(delta) if delta_softplus else delta
    d = u.shape[1]
    Bx, Cx = _expand_bc(B, d), _expand_bc(C, d)
    h = u.new_zeros(u.shape[0], d, A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        bt = Bx[:, :, 0] if Bx.shape[2] == 1 else Bx[:, :, t]
        ct = Cx[:, :, 0] if Cx.shape[2] == 1 else Cx[:, :, t]
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * bt
        ys.append((h * ct).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D[None, :, None]
    if z is not None:
        y = y * F.silu(z)
    y = y.to(dtype)
    return (y, h) if return_last_state else y
