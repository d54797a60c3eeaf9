"""A fused CPU selective scan (numba): the state stays in registers and cache, only outputs are written.

Forward runs the recurrence once per (batch, channel) lane, keeping the d_state-sized state local
and writing the output and one state checkpoint per chunk of time. Backward recomputes each chunk's
states from its checkpoint (as mamba_ssm's CUDA kernel recomputes instead of storing) and runs the
adjoint recurrence in reverse, producing gradients for u, dt, A, B, C and D; the element-wise parts
(dt = softplus(delta + delta_bias), the silu(z) gate) run in torch around it, with autograd, because
torch vectorises their exp and log1p and llvmlite does not. The d_state loops vectorise: decays use
`_decay`, whose float32 path is plain arithmetic.
Lanes of one batch element run in one thread, so the B and C gradients, which are shared by all
channels, need no atomics; batch elements run in parallel.

Only variable (or grouped) B and C are fused, which is what Mamba uses; `scan.selective_scan`
falls back to the chunked PyTorch scan otherwise, or where numba is missing.
"""

import math
from contextlib import contextmanager

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

CHUNK = 64
# Reassociation and contraction let LLVM vectorise the d_state loops (their sums included); NaN and
# infinity semantics are kept.
FAST = {"nsz", "arcp", "contract", "reassoc"}


@njit(inline="always", fastmath=FAST)
def _decay(x, fast):
    """exp(x). With `fast` (float32 inputs): exp(x / 256) ** 256, a degree-8 Taylor polynomial squared
    eight times: plain arithmetic that vectorises (llvmlite has no vector exp), relative error ~1e-7,
    float32's own; x is clamped at -87, where exp(x) is below float32's smallest normal anyway."""
    if not fast:
        return math.exp(x)
    y = max(x, -87.0) * (1.0 / 256.0)
    p = 1.0 + y * (
        1.0
        + y
        * (
            1.0 / 2
            + y * (1.0 / 6 + y * (1.0 / 24 + y * (1.0 / 120 + y * (1.0 / 720 + y * (1.0 / 5040 + y * (1.0 / 40320))))))
        )
    )
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    return p * p


@njit(parallel=True, cache=True, fastmath=FAST)
def _forward(u, dt, A, Bt, Ct, D, fast, chunk, y_out, ckpt, last):
    """u, dt, y_out: (b, d, l); A: (d, n); Bt, Ct: (b, g, l, n); D: (d,);
    ckpt: (b, d, chunks, n) state at the start of each chunk; last: (b, d, n)."""
    b, d, length = u.shape
    n = A.shape[1]
    groups = Bt.shape[1]
    per_group = d // groups
    for bi in prange(b):
        h = np.zeros(n, dtype=u.dtype)
        for di in range(d):
            gi = di // per_group
            h[:] = 0.0
            for t in range(length):
                if t % chunk == 0:
                    ckpt[bi, di, t // chunk, :] = h
                dtt = dt[bi, di, t]
                ut = u[bi, di, t]
                y = 0.0
                for k in range(n):
                    h[k] = _decay(dtt * A[di, k], fast) * h[k] + dtt * Bt[bi, gi, t, k] * ut
                    y += Ct[bi, gi, t, k] * h[k]
                y_out[bi, di, t] = y + D[di] * ut
            last[bi, di, :] = h


@njit(parallel=True, cache=True, fastmath=FAST)
def _backward(u, dt, A, Bt, Ct, D, fast, chunk, ckpt, dy, du, ddt_out, dA_part, dBt, dCt, dD_part):
    b, d, length = u.shape
    n = A.shape[1]
    groups = Bt.shape[1]
    per_group = d // groups
    chunks = ckpt.shape[2]
    for bi in prange(b):
        hbuf = np.zeros((chunk + 1, n), dtype=u.dtype)  # hbuf[0]: state before the chunk
        abuf = np.zeros((chunk, n), dtype=u.dtype)  # the chunk's decays exp(dt A), computed once
        lam = np.zeros(n, dtype=u.dtype)
        for di in range(d):
            gi = di // per_group
            lam[:] = 0.0
            for c in range(chunks - 1, -1, -1):
                t0 = c * chunk
                t1 = min(t0 + chunk, length)
                hbuf[0, :] = ckpt[bi, di, c, :]
                for t in range(t0, t1):  # recompute this chunk's states
                    dtt = dt[bi, di, t]
                    j = t - t0
                    for k in range(n):
                        abuf[j, k] = _decay(dtt * A[di, k], fast)
                        hbuf[j + 1, k] = abuf[j, k] * hbuf[j, k] + dtt * Bt[bi, gi, t, k] * u[bi, di, t]
                for t in range(t1 - 1, t0 - 1, -1):
                    j = t - t0
                    dtt = dt[bi, di, t]
                    ut = u[bi, di, t]
                    g = dy[bi, di, t]
                    dD_part[bi, di] += g * ut
                    du_t = g * D[di]
                    ddt = 0.0
                    for k in range(n):
                        h_prev = hbuf[j, k]
                        a = abuf[j, k]
                        lam_k = lam[k] + g * Ct[bi, gi, t, k]  # dL/dh_t
                        dCt[bi, gi, t, k] += g * hbuf[j + 1, k]
                        dBt[bi, gi, t, k] += lam_k * dtt * ut
                        du_t += lam_k * dtt * Bt[bi, gi, t, k]
                        ddt += lam_k * (Bt[bi, gi, t, k] * ut + A[di, k] * a * h_prev)
                        dA_part[bi, di, k] += lam_k * dtt * a * h_prev
                        lam[k] = lam_k * a
                    ddt_out[bi, di, t] = ddt
                    du[bi, di, t] = du_t


@contextmanager
def _torch_thread_count():
    """Run numba's kernels on torch's thread count, and leave torch's count as it was: numba's first
    parallel launch sets the process-wide OpenMP thread count (a runtime torch shares) to
    NUMBA_NUM_THREADS, which torch would then silently use too, ignoring the job's `threads`."""
    n = torch.get_num_threads()
    numba.set_num_threads(min(numba.config.NUMBA_NUM_THREADS, max(1, n)))
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def _np(t: torch.Tensor) -> np.ndarray:
    """A numpy view; copied only if time (the last axis) is not contiguous, e.g. a sliced conv output
    passes as it is (the kernel walks each lane along time)."""
    t = t.detach()
    return (t if t.stride(-1) == 1 else t.contiguous()).numpy()


class FusedRecurrence(torch.autograd.Function):
    """y = the S6 recurrence read out by C, plus D u, with step size dt = softplus(raw) (or raw).

    Saves `raw` and recomputes the softplus in backward: one (b, d, l) tensor fewer held per layer."""

    @staticmethod
    def forward(ctx, u, raw, A, B, C, D, softplus):
        dt = F.softplus(raw) if softplus else raw
        b, d, length = u.shape
        n = A.shape[1]
        Bt = (B[:, None] if B.dim() == 3 else B).transpose(-1, -2).contiguous()  # (b, g, l, n)
        Ct = (C[:, None] if C.dim() == 3 else C).transpose(-1, -2).contiguous()
        chunks = (length + CHUNK - 1) // CHUNK
        y = torch.empty_like(u)
        ckpt = u.new_empty(b, d, chunks, n)
        last = u.new_empty(b, d, n)
        with _torch_thread_count():
            _forward(
                _np(u),
                _np(dt),
                _np(A),
                _np(Bt),
                _np(Ct),
                _np(D),
                u.dtype == torch.float32,
                CHUNK,
                y.numpy(),
                ckpt.numpy(),
                last.numpy(),
            )
        ctx.save_for_backward(u, raw, A, Bt, Ct, D, ckpt)
        ctx.dims, ctx.softplus = (B.dim(), C.dim()), softplus
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        u, raw, A, Bt, Ct, D, ckpt = ctx.saved_tensors
        dt = F.softplus(raw) if ctx.softplus else raw
        if dlast is not None and dlast.abs().max() > 0:
            raise NotImplementedError("the fused scan does not backpropagate through last_state; use the PyTorch scan")
        b, d, _ = u.shape
        du, ddt = torch.empty_like(u), torch.empty_like(u)
        dBt, dCt = torch.zeros_like(Bt), torch.zeros_like(Ct)
        dA_part, dD_part = u.new_zeros(b, d, A.shape[1]), u.new_zeros(b, d)
        with _torch_thread_count():
            _backward(
                _np(u),
                _np(dt),
                _np(A),
                _np(Bt),
                _np(Ct),
                _np(D),
                u.dtype == torch.float32,
                CHUNK,
                _np(ckpt),
                _np(dy.to(u.dtype)),
                du.numpy(),
                ddt.numpy(),
                dA_part.numpy(),
                dBt.numpy(),
                dCt.numpy(),
                dD_part.numpy(),
            )
        del dt
        if ctx.softplus:
            ddt.mul_(torch.sigmoid(raw))
        dB, dC = dBt.transpose(-1, -2), dCt.transpose(-1, -2)
        b_dim, c_dim = ctx.dims
        return (
            du,
            ddt,
            dA_part.sum(0),
            dB[:, 0] if b_dim == 3 else dB,
            dC[:, 0] if c_dim == 3 else dC,
            dD_part.sum(0),
            None,
        )


class SiluGate(torch.autograd.Function):
    """y * silu(z), saving y and z only (silu(z) is recomputed in backward)."""

    @staticmethod
    def forward(ctx, y, z):
        ctx.save_for_backward(y, z)
        return y * F.silu(z)

    @staticmethod
    def backward(ctx, g):
        y, z = ctx.saved_tensors
        sig = torch.sigmoid(z)
        dy = (g * z).mul_(sig)
        dz = (1 - sig).mul_(z).add_(1).mul_(sig).mul_(y).mul_(g)  # d silu(z)/dz = sig (1 + z (1 - sig))
        return dy, dz


def fused_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """(out, last_state); the same semantics as scan.selective_scan_ref, in u's dtype (float32 or float64).

    The step size (bias, softplus) and the output gate (silu(z)) are element-wise over (b, d, l):
    torch's vectorised kernels do them, with autograd; the kernel does the recurrence."""
    dtype = u.dtype
    raw = delta.to(dtype)
    if delta_bias is not None:
        raw = raw + delta_bias.to(dtype)[None, :, None]
    D_ = D.to(dtype) if D is not None else u.new_zeros(u.shape[1])
    y, last = FusedRecurrence.apply(u, raw, A.to(dtype), B.to(dtype), C.to(dtype), D_, bool(delta_softplus))
    if z is not None:
        y = SiluGate.apply(y, z.to(dtype))
    return y, last
