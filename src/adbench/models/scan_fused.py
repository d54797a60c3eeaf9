"""A fused CPU selective scan (numba): the state stays in registers and cache, only outputs are written.

Forward runs the recurrence once per (batch, channel) lane, keeping the d_state-sized state local
and writing the output and one state checkpoint per chunk of time. Backward recomputes each chunk's
states from its checkpoint (as mamba_ssm's CUDA kernel recomputes instead of storing) and runs the
adjoint recurrence in reverse, producing gradients for u, delta, A, B, C, D, z and delta_bias.
Lanes of one batch element run in one thread, so the B and C gradients, which are shared by all
channels, need no atomics; batch elements run in parallel.

Only variable (or grouped) B and C are fused, which is what Mamba uses; `scan.selective_scan`
falls back to the chunked PyTorch scan otherwise, or where numba is missing.
"""

import math

import numba
import numpy as np
import torch
from numba import njit, prange

CHUNK = 64


@njit(parallel=True, cache=True, fastmath=False)
def _forward(u, delta, A, Bt, Ct, D, z, bias, softplus, has_z, chunk, out, y_pre, ckpt, last):
    """u, delta, z, out, y_pre: (b, d, l); A: (d, n); Bt, Ct: (b, g, l, n); D, bias: (d,);
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
                dt = delta[bi, di, t] + bias[di]
                if softplus:
                    dt = math.log1p(math.exp(dt)) if dt <= 20.0 else dt
                ut = u[bi, di, t]
                y = 0.0
                for k in range(n):
                    h[k] = math.exp(dt * A[di, k]) * h[k] + dt * Bt[bi, gi, t, k] * ut
                    y += Ct[bi, gi, t, k] * h[k]
                y += D[di] * ut
                if has_z:
                    zt = z[bi, di, t]
                    y_pre[bi, di, t] = y
                    out[bi, di, t] = y * zt / (1.0 + math.exp(-zt))
                else:
                    out[bi, di, t] = y
            last[bi, di, :] = h


@njit(parallel=True, cache=True, fastmath=False)
def _backward(u, delta, A, Bt, Ct, D, z, bias, softplus, has_z, chunk, y_pre, ckpt, dout,
              du, ddelta, dA_part, dBt, dCt, dD_part, dz, dbias_part):
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
                    dt = delta[bi, di, t] + bias[di]
                    if softplus:
                        dt = math.log1p(math.exp(dt)) if dt <= 20.0 else dt
                    j = t - t0
                    for k in range(n):
                        abuf[j, k] = math.exp(dt * A[di, k])
                        hbuf[j + 1, k] = abuf[j, k] * hbuf[j, k] + dt * Bt[bi, gi, t, k] * u[bi, di, t]
                for t in range(t1 - 1, t0 - 1, -1):
                    j = t - t0
                    raw = delta[bi, di, t] + bias[di]
                    if softplus:
                        dt = math.log1p(math.exp(raw)) if raw <= 20.0 else raw
                    else:
                        dt = raw
                    ut = u[bi, di, t]
                    g = dout[bi, di, t]
                    if has_z:
                        zt = z[bi, di, t]
                        sig = 1.0 / (1.0 + math.exp(-zt))
                        dz[bi, di, t] = g * y_pre[bi, di, t] * sig * (1.0 + zt * (1.0 - sig))
                        g = g * zt * sig
                    dD_part[bi, di] += g * ut
                    du_t = g * D[di]
                    ddt = 0.0
                    for k in range(n):
                        h_t = hbuf[j + 1, k]
                        h_prev = hbuf[j, k]
                        a = abuf[j, k]
                        lam_k = lam[k] + g * Ct[bi, gi, t, k]  # dL/dh_t
                        dCt[bi, gi, t, k] += g * h_t
                        dBt[bi, gi, t, k] += lam_k * dt * ut
                        du_t += lam_k * dt * Bt[bi, gi, t, k]
                        ddt += lam_k * (Bt[bi, gi, t, k] * ut + A[di, k] * a * h_prev)
                        dA_part[bi, di, k] += lam_k * dt * a * h_prev
                        lam[k] = lam_k * a
                    if softplus:
                        ddt = ddt / (1.0 + math.exp(-raw))
                    ddelta[bi, di, t] = ddt
                    dbias_part[bi, di] += ddt
                    du[bi, di, t] = du_t


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class FusedSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        dtype = u.dtype
        b, d, length = u.shape
        n = A.shape[1]
        Bt = (B[:, None] if B.dim() == 3 else B).transpose(-1, -2).contiguous()  # (b, g, l, n)
        Ct = (C[:, None] if C.dim() == 3 else C).transpose(-1, -2).contiguous()
        D_ = D.to(dtype) if D is not None else u.new_zeros(d)
        bias = delta_bias.to(dtype) if delta_bias is not None else u.new_zeros(d)
        z_ = z if z is not None else u.new_zeros(1, 1, 1)
        chunks = (length + CHUNK - 1) // CHUNK
        out = torch.empty_like(u)
        y_pre = torch.empty_like(u) if z is not None else u.new_empty(1, 1, 1)
        ckpt = u.new_empty(b, d, chunks, n)
        last = u.new_empty(b, d, n)
        numba.set_num_threads(min(numba.config.NUMBA_NUM_THREADS, max(1, torch.get_num_threads())))
        _forward(_np(u), _np(delta.to(dtype)), _np(A.to(dtype)), _np(Bt.to(dtype)), _np(Ct.to(dtype)), _np(D_), _np(z_),
                 _np(bias), bool(delta_softplus), z is not None, CHUNK, out.numpy(), y_pre.numpy(), ckpt.numpy(),
                 last.numpy())
        ctx.save_for_backward(u, delta, A, Bt, Ct, D_, z_, bias, y_pre, ckpt)
        ctx.flags = (bool(delta_softplus), z is not None, B.dim(), C.dim(), D is not None, delta_bias is not None)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, Bt, Ct, D_, z_, bias, y_pre, ckpt = ctx.saved_tensors
        softplus, has_z, b_dim, c_dim, has_d, has_bias = ctx.flags
        if dlast is not None and dlast.abs().max() > 0:
            raise NotImplementedError("the fused scan does not backpropagate through last_state; use the PyTorch scan")
        b, d, _ = u.shape
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dz = torch.zeros_like(u) if has_z else u.new_empty(1, 1, 1)
        dBt, dCt = torch.zeros_like(Bt), torch.zeros_like(Ct)
        dA_part, dD_part, dbias_part = u.new_zeros(b, d, A.shape[1]), u.new_zeros(b, d), u.new_zeros(b, d)
        _backward(_np(u), _np(delta.to(u.dtype)), _np(A.to(u.dtype)), _np(Bt), _np(Ct), _np(D_), _np(z_), _np(bias),
                  softplus, has_z, CHUNK, _np(y_pre), _np(ckpt), _np(dout.to(u.dtype)), du.numpy(), ddelta.numpy(),
                  dA_part.numpy(), dBt.numpy(), dCt.numpy(), dD_part.numpy(), dz.numpy(), dbias_part.numpy())
        dB = dBt.transpose(-1, -2)
        dC = dCt.transpose(-1, -2)
        return (du, ddelta, dA_part.sum(0), dB[:, 0] if b_dim == 3 else dB, dC[:, 0] if c_dim == 3 else dC,
                dD_part.sum(0) if has_d else None, dz if has_z else None, dbias_part.sum(0) if has_bias else None, None)


def fused_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """(out, last_state); the same semantics as scan.selective_scan_ref, in u's dtype (float32 or float64)."""
    return FusedSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
