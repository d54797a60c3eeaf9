"""Our Mamba block against an implementation written independently of it: mambapy's pure-PyTorch Mamba,
loaded with our weights (the parameter names agree), in float64. Catches a mistake that all of our own
paths (native, torch, recurrent, checkpointed) would share.

mambapy casts A and D to float32 inside its scan (as mamba_ssm does), so the two agree to float32's
precision in those two factors (~1e-7 relative), not float64's: TOL says so. A structural mistake (a
missing gate, a wrong conv offset, a transposed projection) differs by orders of magnitude more."""

import pytest
import torch
import torch.nn.functional as F

from adbench.models import kernels
from adbench.models.mamba import MambaBackbone

mambapy = pytest.importorskip("mambapy.mamba")

D_MODEL, N_LAYERS, D_STATE, LENGTH = 16, 2, 4, 37
TOL = {"rtol": 1e-5, "atol": 1e-7}


def _pair(seed=0):
    torch.manual_seed(seed)
    ours = MambaBackbone(D_MODEL, N_LAYERS, d_state=D_STATE).double()
    with torch.no_grad():  # spread the weights that start at constants, so that a swap cannot hide
        for name, p in ours.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D", "dt_proj.bias")):
                p.add_(0.3 * torch.randn_like(p))
    cfg = mambapy.MambaConfig(d_model=D_MODEL, n_layers=N_LAYERS, d_state=D_STATE, pscan=False)
    theirs = mambapy.Mamba(cfg).double()
    state = {k: v for k, v in ours.state_dict().items() if not k.startswith("norm_f")}
    theirs.load_state_dict(state, strict=True)
    return ours, theirs


def _final_norm(ours, y):
    return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + ours.norm_f.eps) * ours.norm_f.weight


def test_forward_and_every_gradient_equal_mambapys():
    ours, theirs = _pair()
    x = torch.randn(3, LENGTH, D_MODEL, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y = ours(x)
    ref = _final_norm(ours, theirs(x2))
    torch.testing.assert_close(y, ref, **TOL)
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, **TOL)
    theirs_grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        if not name.startswith("norm_f"):
            torch.testing.assert_close(p.grad, theirs_grads[name].grad, **TOL, msg=name)


def test_recurrent_steps_equal_mambapys():
    ours, theirs = _pair(1)
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    state = ours.init_state(2)
    caches = [
        (torch.zeros(2, 2 * D_MODEL, D_STATE, dtype=torch.float64), torch.zeros(2, 2 * D_MODEL, 3, dtype=torch.float64))
        for _ in range(N_LAYERS)
    ]
    with torch.no_grad():
        for t in range(x.shape[1]):
            y, state = ours.step(x[:, t], state)
            ref, caches = theirs.step(x[:, t], caches)
            torch.testing.assert_close(y, _final_norm(ours, ref), **TOL)


def test_the_block_is_a_pre_norm_residual_of_the_mixer():
    """What both implementations compute, written out for one layer: x + mixer(rms_norm(x))."""
    ours, _ = _pair(2)
    layer = ours.layers[0]
    x = torch.randn(2, 5, D_MODEL, dtype=torch.float64)
    normed = F.rms_norm(x, (D_MODEL,), layer.norm.weight, layer.norm.eps)
    impl = kernels.choose(x, D_STATE)
    torch.testing.assert_close(layer(x, impl), x + layer.mixer(normed, impl), rtol=1e-10, atol=1e-12)
