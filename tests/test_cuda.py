"""CUDA checks: mamba_ssm's kernels against our scans and our Mamba layer, and the pipeline on a GPU.

Skipped without a CUDA device (the CPU suite never needs one); the mamba_ssm checks also need the
`cuda` extra (mamba-ssm) installed.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from adbench import train
from adbench.evaluate import evaluate_model
from adbench.models import build, kernels, load_checkpoint
from adbench.models.mamba import Mamba
from adbench.models.scan import scan_implementation, selective_scan, selective_scan_ref

from .test_models import _scan_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def _mamba_ssm():
    return pytest.importorskip("mamba_ssm.ops.selective_scan_interface", reason="needs mamba-ssm (the cuda extra)")


@pytest.mark.parametrize("length", [1, 37, 2048 + 5])
@pytest.mark.parametrize("bc", ["variable", "grouped", "fixed"])
@pytest.mark.parametrize("use_z, use_d, use_bias", [(True, True, True), (False, False, False)])
def test_mamba_ssm_kernel_equals_our_scans_outputs_and_gradients(length, bc, use_z, use_d, use_bias):
    """mamba_ssm's selective_scan_fn (float32, CUDA) against the float64 sequential reference and our
    PyTorch scan on CUDA: outputs, last state and the gradients of every input."""
    kernel = _mamba_ssm().selective_scan_fn
    args64 = _scan_inputs(2, 24, 8, length, variable_bc=bc != "fixed", grouped=bc == "grouped")
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    used = {"D": use_d, "z": use_z, "delta_bias": use_bias}

    def call(fn, tensors):
        kw = {k: (v if used.get(k, True) else None) for k, v in zip(names[5:], tensors[5:])}
        return fn(*tensors[:5], **kw, delta_softplus=True, return_last_state=True)

    leaves = {
        "ref": [a.clone().requires_grad_() for a in args64],
        "mamba_ssm": [a.float().to(CUDA).requires_grad_() for a in args64],
        "torch": [a.float().to(CUDA).requires_grad_() for a in args64],
        "auto": [a.float().to(CUDA).requires_grad_() for a in args64],  # ours, which picks mamba_ssm on CUDA
    }
    outs = {
        "ref": call(selective_scan_ref, leaves["ref"]),
        "mamba_ssm": call(kernel, leaves["mamba_ssm"]),
        "torch": call(lambda *a, **k: selective_scan(*a, **k, impl="torch"), leaves["torch"]),
        "auto": call(selective_scan, leaves["auto"]),
    }
    w = torch.randn(outs["ref"][0].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = {}
    for key, (out, _last) in outs.items():
        grads[key] = torch.autograd.grad((out * w.to(out)).sum(), leaves[key], allow_unused=True)
    ref_out, ref_last = outs["ref"]
    for key in ("mamba_ssm", "torch", "auto"):
        out, last = outs[key]
        if key == "mamba_ssm" and bc == "fixed":
            # mamba_ssm's kernel scans a fixed B's state without its factor B (B multiplies in at the
            # readout), and returns that as last_state: the true state is last * B
            last = last * leaves[key][3].detach()[None]
        torch.testing.assert_close(out.double().cpu(), ref_out, rtol=1e-4, atol=1e-4, msg=f"{key} output")
        torch.testing.assert_close(last.double().cpu(), ref_last, rtol=1e-4, atol=1e-4, msg=f"{key} last state")
        for name, g, rg in zip(names, grads[key], grads["ref"]):
            if rg is None or not used.get(name, True):
                continue
            atol = 1e-3 * rg.abs().max().item() + 1e-5  # (a gradient that is exactly 0 comes out ~1e-6 in float32)
            torch.testing.assert_close(g.double().cpu(), rg, rtol=1e-3, atol=atol, msg=f"{key} d{name}")


def _layer_pair(d_model=32, seed=0):
    from mamba_ssm.modules.mamba_simple import Mamba as TheirMamba

    torch.manual_seed(seed)
    ours = Mamba(d_model).to(CUDA)
    theirs = TheirMamba(d_model, use_fast_path=False).to(CUDA)  # the fast path needs causal-conv1d
    theirs.load_state_dict(ours.state_dict(), strict=True)  # same parameter names and shapes
    return ours, theirs


def test_our_mamba_layer_equals_mamba_ssms_forward_backward_and_step():
    _mamba_ssm()
    ours, theirs = _layer_pair()
    x = torch.randn(2, 300, 32, device=CUDA)
    impl = kernels.choose(x, ours.d_state)
    assert impl == "mamba_ssm" and scan_implementation(impl, x.transpose(1, 2), x, x) == "mamba_ssm"
    y_ours, y_theirs = ours(x, impl), theirs(x)
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-4, atol=1e-5)
    w = torch.randn_like(y_ours)
    names = [name for name, _ in ours.named_parameters()]
    theirs_by_name = dict(theirs.named_parameters())
    g_ours = torch.autograd.grad((y_ours * w).sum(), [p for _, p in ours.named_parameters()])
    g_theirs = torch.autograd.grad((y_theirs * w).sum(), [theirs_by_name[n] for n in names])
    for name, a, b in zip(names, g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item(), msg=name)
    # recurrent inference: our step against mamba_ssm's (its selective_state_update where triton runs)
    state = ours.init_state(2, CUDA)
    conv_state, ssm_state = (s.clone() for s in state)
    with torch.no_grad():
        for t in range(12):
            a, state = ours.step(x[:, t], state)
            b, conv_state, ssm_state = theirs.step(x[:, t : t + 1], conv_state, ssm_state)
            torch.testing.assert_close(a, b[:, 0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(a, y_ours[:, t].detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["mamba", "transformer"])
def test_backbones_on_cuda_equal_cpu(arch):
    """The same weights give the same outputs and step outputs on CUDA (float32) as on the CPU."""
    torch.manual_seed(0)
    policy = build(arch, 5, 2, d_model=32, n_layers=2, window=64)
    x = torch.randn(2, 150, 32)
    with torch.no_grad():
        ref = policy.backbone(x, **({"window": 64} if arch == "transformer" else {}))
        policy.to(CUDA)
        out = policy.backbone(x.to(CUDA), **({"window": 64} if arch == "transformer" else {}))
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
        state = policy.backbone.init_state(2, CUDA)
        for t in range(70):  # past the transformer's window: its cache wraps around
            h, state = policy.backbone.step(x[:, t].to(CUDA), state)
        torch.testing.assert_close(h.cpu(), ref[:, 69], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["mamba", "transformer"])
def test_training_and_evaluation_run_on_cuda(cfg, dataset, tmp_path, arch):
    """A short training run (bfloat16 autocast) and an in-context evaluation, both on the GPU."""
    cfg["train"].update(steps=40, log_every=10, device="cuda")
    cfg["evaluate"].update(device="cuda", episodes=3, seeds=[0])
    path = train.run(cfg, dataset, arch, 2, 0, tmp_path / arch, progress=False)
    rows = pd.read_csv(tmp_path / arch / "metrics.csv")
    assert np.isfinite(rows["loss"]).all() and rows["loss"].iloc[-1] < rows["loss"].iloc[0]
    assert (rows["peak_mem_mib"] > 0).all()
    model, _ = load_checkpoint(path, expect_arch=arch)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    evaluate_model(cfg, dataset, path, tmp_path / "e.csv", progress=False)
    df = pd.read_csv(tmp_path / "e.csv")
    assert len(df) and np.isfinite(df["return"]).all()
    assert math.isfinite(df["return"].mean())
