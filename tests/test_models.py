import math
import shutil
from contextlib import contextmanager

import pytest
import torch

from adbench.models import (
    ARCHITECTURES,
    ModelError,
    build,
    count_parameters,
    kernels,
    load_checkpoint,
    save_checkpoint,
    selective_scan,
    selective_scan_ref,
    state_mib,
)
from adbench.models.mamba import MambaBackbone
from adbench.models.policy import clipped_gaussian_nll, gaussian_nll, mixture_nll
from adbench.models.transformer import TransformerBackbone

HAS_COMPILER = shutil.which("gcc") is not None or shutil.which("cc") is not None


@contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _needs_native(impl: str) -> None:
    """The native kernel is built with the system's C compiler; where there is none it cannot be tested."""
    if impl == "native" and not HAS_COMPILER:
        pytest.skip("no C compiler: the native scan kernel cannot be built (the PyTorch scan runs instead)")


def _scan_inputs(b, d, n, length, variable_bc=True, grouped=False, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    u, delta = r(b, d, length), r(b, d, length) * 0.5
    A = -torch.rand(d, n, generator=g, dtype=dtype) - 0.1
    if grouped:
        B, C = r(b, 2, n, length), r(b, 2, n, length)
    elif variable_bc:
        B, C = r(b, n, length), r(b, n, length)
    else:
        B, C = r(d, n), r(d, n)
    return u, delta, A, B, C, r(d), r(b, d, length), r(d)


@pytest.mark.parametrize("impl", ["torch", "native"])
@pytest.mark.parametrize("length, chunk", [(37, 8), (64, 64), (5, 16), (130, 32)])
@pytest.mark.parametrize("use_z, use_d, use_bias", [(True, True, True), (False, False, False), (True, False, True)])
def test_scan_equals_reference_outputs_and_gradients(impl, length, chunk, use_z, use_d, use_bias):
    _needs_native(impl)
    u, delta, A, B, C, D, z, bias = _scan_inputs(2, 6, 4, length)
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
    kw = dict(
        D=D if use_d else None,
        z=z if use_z else None,
        delta_bias=bias if use_bias else None,
        delta_softplus=True,
        return_last_state=True,
    )
    out, last = selective_scan(u, delta, A, B, C, chunk=chunk, impl=impl, **kw)
    ref, ref_last = selective_scan_ref(u, delta, A, B, C, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(out)
    through_last = last.sum() if impl == "torch" else 0.0  # the native kernel's last state is inference-only
    grads = torch.autograd.grad((out * w).sum() + through_last, leaves, allow_unused=True)
    ref_grads = torch.autograd.grad(
        (ref * w).sum() + (ref_last.sum() if impl == "torch" else 0.0), leaves, allow_unused=True
    )
    for g, rg in zip(grads, ref_grads):
        if rg is None:
            assert g is None or g.abs().max() == 0
        else:
            torch.testing.assert_close(g, rg, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("impl", ["torch", "native"])  # the native kernel hands these to the PyTorch scan
@pytest.mark.parametrize("kind", ["fixed", "grouped"])
def test_scan_accepts_fixed_and_grouped_b_c(kind, impl):
    u, delta, A, B, C, D, z, bias = _scan_inputs(2, 4, 3, 21, variable_bc=kind != "fixed", grouped=kind == "grouped")
    torch.testing.assert_close(
        selective_scan(u, delta, A, B, C, D, z, bias, True, chunk=6, impl=impl),
        selective_scan_ref(u, delta, A, B, C, D, z, bias, True),
    )


@pytest.mark.parametrize("impl, d", [("torch", 4), ("native", 4), ("native", 16)])
def test_kernel_gradients_with_grouped_b_c_and_long_odd_lengths(impl, d):
    _needs_native(impl)
    if impl == "native" and d % 16:  # channel groups that are not whole vector blocks: not native
        from adbench.models.scan import scan_implementation

        u, _, _, B, C, *_ = _scan_inputs(2, d, 3, 5, grouped=True)
        assert scan_implementation("native", u, B, C) == "torch"
        return
    u, delta, A, B, C, D, z, bias = _scan_inputs(2, d, 3, 201, grouped=True)
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
    out = selective_scan(u, delta, A, B, C, D, z, bias, True, impl=impl)
    ref = selective_scan_ref(u, delta, A, B, C, D, z, bias, True)
    for g, rg in zip(torch.autograd.grad(out.square().sum(), leaves), torch.autograd.grad(ref.square().sum(), leaves)):
        torch.testing.assert_close(g, rg, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("impl", ["torch", "native"])
def test_scan_passes_gradcheck(impl):
    _needs_native(impl)
    u, delta, A, B, C, D, z, bias = _scan_inputs(1, 2, 2, 7)
    inputs = tuple(t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias))
    assert torch.autograd.gradcheck(lambda *x: selective_scan(*x, delta_softplus=True, chunk=3, impl=impl), inputs)


@pytest.mark.parametrize("impl", ["torch", "native"])
def test_scan_float32_matches_float64_reference(impl):
    _needs_native(impl)
    args = _scan_inputs(2, 8, 16, 300)
    leaves64 = [a.clone().requires_grad_() for a in args]
    leaves32 = [a.float().requires_grad_() for a in args]
    ref = selective_scan_ref(*leaves64[:5], D=leaves64[5], z=leaves64[6], delta_bias=leaves64[7], delta_softplus=True)
    out = selective_scan(
        *leaves32[:5], D=leaves32[5], z=leaves32[6], delta_bias=leaves32[7], delta_softplus=True, impl=impl
    )
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    w = torch.randn_like(ref)
    for g32, g64 in zip(
        torch.autograd.grad((out * w.float()).sum(), leaves32), torch.autograd.grad((ref * w).sum(), leaves64)
    ):
        torch.testing.assert_close(g32.double(), g64, rtol=1e-3, atol=1e-3 * g64.abs().max().item())


def test_kernels_pick_native_on_cpu_and_honour_the_override(monkeypatch):
    _needs_native("native")
    from adbench.models import kernels
    from adbench.models.scan import scan_implementation

    u, _, _, B, C, *_ = _scan_inputs(1, 2, 2, 5)
    assert kernels.choose(u, 2) == "native" and scan_implementation("native", u, B, C) == "native"
    assert scan_implementation("native", u, torch.randn(2, 2), C) == "torch"  # the C kernel takes variable B only
    assert kernels.choose(u.half(), 2) == "torch"  # and float32 or float64
    assert kernels.choose(u, 65) == "torch"  # and states of at most 64
    for choice in ("torch", "native"):
        monkeypatch.setenv("ADBENCH_SCAN", choice)
        assert kernels.choose(u, 2) == choice
    monkeypatch.setenv("ADBENCH_SCAN", "fast")
    with pytest.raises(ValueError, match="ADBENCH_SCAN='fast' is not one of auto, native, torch"):
        kernels.choose(u, 2)
    with pytest.raises(ValueError, match="impl='auto' is not one of mamba_ssm, native, torch"):
        scan_implementation("auto", u, B, C)


def test_a_backbone_forward_decides_its_kernels_once_and_every_layer_runs_on_them(monkeypatch):
    """One `kernels.choose` per forward, whatever the layer count; the norms, convolutions and scans of
    every layer receive its pick."""
    from adbench.models import kernels, mamba, scan

    backbone = MambaBackbone(16, 3)
    calls, seen = [], []
    choose = kernels.choose
    monkeypatch.setattr(kernels, "choose", lambda *a: calls.append(a) or choose(*a))
    for name in ("rms_norm", "conv_silu"):
        original = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _f=original, _n=name: seen.append((_n, a[-1])) or _f(*a))
    original_scan = scan.selective_scan
    monkeypatch.setattr(
        mamba, "selective_scan", lambda *a, **k: seen.append(("scan", k["impl"])) or original_scan(*a, **k)
    )
    backbone(torch.randn(2, 9, 16))
    assert len(calls) == 1
    picked = choose(torch.randn(2, 9, 16), 16)
    assert sorted(seen) == sorted([("rms_norm", picked)] * 4 + [("conv_silu", picked)] * 3 + [("scan", picked)] * 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("width, threads", [(4, 1), (4, 4), (3, 4)])
def test_native_conv_silu_equals_torchs_conv1d(monkeypatch, dtype, width, threads):
    """On 4 threads the 3 sequences are too few to go one per thread, so the kernels split the steps
    (each unit's last dx reaches K - 1 steps into the next unit's range); width 3 is the generic path."""
    _needs_native("native")
    from adbench.models import kernels

    def conv_silu(x, w, b):
        return kernels.conv_silu(x, w, b, kernels.choose(x))

    g = torch.Generator().manual_seed(0)
    xz = torch.randn(3, 50, 40, generator=g, dtype=dtype)  # x is a strided slice, as Mamba's in_proj makes it
    w, b = torch.randn(20, 1, width, generator=g, dtype=dtype), torch.randn(20, generator=g, dtype=dtype)
    _assert_native_equals_torch(monkeypatch, lambda x, w, b: conv_silu(x[..., :20], w, b), (xz, w, b), threads)


def _assert_native_equals_torch(monkeypatch, fn, inputs, threads: int) -> None:
    """fn's output and its inputs' gradients with the C kernels (ADBENCH_SCAN=native) and with torch's
    ops, on `threads` threads, agree to the inputs' precision."""
    results = {}
    with _torch_threads(threads):
        for choice in ("native", "torch"):
            monkeypatch.setenv("ADBENCH_SCAN", choice)
            leaves = [t.clone().requires_grad_() for t in inputs]
            out = fn(*leaves)
            results[choice] = [
                out,
                *torch.autograd.grad((out * torch.arange(out.numel()).reshape(out.shape).sin()).sum(), leaves),
            ]
    tol = 1e-12 if inputs[0].dtype == torch.float64 else 1e-5
    for a, b in zip(results["native"], results["torch"]):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("n", [8, 12, 17])
def test_native_scan_state_sizes(n):
    """The backward kernel's adjoint runs the state indices in tiles of 8: whole tiles, and a partial
    one after them, against the sequential reference (float64, every gradient)."""
    _needs_native("native")
    u, delta, A, B, C, D, z, bias = _scan_inputs(2, 6, n, 70)
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
    kw = dict(D=D, z=z, delta_bias=bias, delta_softplus=True)
    out = selective_scan(u, delta, A, B, C, impl="native", **kw)
    ref = selective_scan_ref(u, delta, A, B, C, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(out)
    for g, rg in zip(torch.autograd.grad((out * w).sum(), leaves), torch.autograd.grad((ref * w).sum(), leaves)):
        torch.testing.assert_close(g, rg, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_rms_norm_equals_torchs_ops(monkeypatch, dtype, threads):
    """RMSNorm by the C kernel against torch's ops: output and the input's and weight's gradients; width
    21 (a whole vector block of floats and a partial one), rows split over threads."""
    _needs_native("native")
    from adbench.models import kernels

    def rms_norm(x, w, eps):
        return kernels.rms_norm(x, w, eps, kernels.choose(x))

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 7, 21, generator=g, dtype=dtype) * 3, torch.randn(21, generator=g, dtype=dtype)
    _assert_native_equals_torch(monkeypatch, lambda x, w: rms_norm(x, w, 1e-5), (x, w), threads)
    with torch.no_grad():  # inference: the kernel is called without the autograd Function
        outs = []
        for choice in ("native", "torch"):
            monkeypatch.setenv("ADBENCH_SCAN", choice)
            outs.append(rms_norm(x, w, 1e-5))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(*outs, rtol=tol, atol=tol)


def _tokens(b, length, d, seed=0):
    return torch.randn(b, length, d, generator=torch.Generator().manual_seed(seed))


def _stepped(backbone, x):
    state, outs = backbone.init_state(x.shape[0]), []
    for t in range(x.shape[1]):
        y, state = backbone.step(x[:, t], state)
        outs.append(y)
    return torch.stack(outs, 1)


def test_mamba_step_equals_forward():
    torch.manual_seed(0)
    m = MambaBackbone(32, 2).eval()
    x = _tokens(3, 90, 32)
    with torch.no_grad():
        torch.testing.assert_close(_stepped(m, x), m(x), rtol=1e-5, atol=1e-5)


def test_transformer_step_equals_forward_within_the_window():
    torch.manual_seed(0)
    m = TransformerBackbone(32, 2, 4, 64, window=100).eval()
    x = _tokens(3, 100, 32)
    with torch.no_grad():
        torch.testing.assert_close(_stepped(m, x), m(x), rtol=1e-5, atol=1e-5)


def test_transformer_step_past_the_window_is_sliding_window_attention():
    torch.manual_seed(0)
    m = TransformerBackbone(32, 2, 4, 64, window=16).eval()
    x = _tokens(2, 70, 32)
    with torch.no_grad():
        torch.testing.assert_close(_stepped(m, x), m(x, window=16), rtol=1e-5, atol=1e-5)


def test_one_layer_transformer_step_past_the_window_equals_a_forward_over_the_window():
    torch.manual_seed(0)
    m = TransformerBackbone(32, 1, 4, 64, window=16).eval()
    x = _tokens(2, 70, 32)
    with torch.no_grad():
        stepped = _stepped(m, x)
        for t in (16, 40, 69):
            torch.testing.assert_close(stepped[:, t], m(x[:, t - 15 : t + 1])[:, -1], rtol=1e-5, atol=1e-5)


def test_architectures_have_equal_parameter_counts():
    counts = {a: count_parameters(build(a, 11, 3, d_model=64, n_layers=4)) for a in ARCHITECTURES}
    assert abs(counts["mamba"] - counts["transformer"]) / counts["mamba"] < 0.01


def test_inference_state_size_is_constant_for_mamba_and_grows_with_the_window_for_the_transformer():
    batch, d_model, layers, window = 3, 32, 2, 100
    mib = {
        (arch, w): state_mib(build(arch, 5, 2, d_model=d_model, n_layers=layers, window=w).init_state(batch))
        for arch in ARCHITECTURES
        for w in (window, 2 * window)
    }
    d_inner, d_conv, d_state, float32 = 2 * d_model, 4, 16, 4
    mamba = layers * batch * d_inner * (d_conv + d_state) * float32 / 2**20  # conv and SSM states per layer
    kv_cache = layers * 2 * batch * window * d_model * float32 / 2**20  # keys and values over every head
    assert mib[("mamba", window)] == pytest.approx(mamba) and mib[("mamba", 2 * window)] == mib[("mamba", window)]
    assert mib[("transformer", window)] == pytest.approx(kv_cache)
    assert mib[("transformer", 2 * window)] == pytest.approx(2 * kv_cache)
    assert state_mib({"pos": 7, "h": [torch.zeros(2, 2**18)]}) == pytest.approx(2.0)  # nested, non-tensors ignored


def test_policy_step_equals_forward_for_both_architectures():
    torch.manual_seed(0)
    b, length = 2, 60
    obs, act = torch.randn(b, length, 5), torch.randn(b, length, 2)
    rew, start = torch.randn(b, length), (torch.arange(length) % 20 == 0).float().expand(b, -1)
    for arch in ARCHITECTURES:
        model = build(arch, 5, 2, d_model=32, window=length).eval()
        with torch.no_grad():
            mean, log_std = model(obs, act, rew, start)
            state, means = model.init_state(b), []
            for t in range(length):
                m, _, state = model.step(obs[:, t], act[:, t], rew[:, t], start[:, t], state)
                means.append(m)
        torch.testing.assert_close(torch.stack(means, 1), mean, rtol=1e-5, atol=1e-5)


def _batch_acting_on_obs(action_of_obs) -> dict:
    """4 sequences of 30 steps, 3-d observations, 2-d actions given by `action_of_obs(obs[..., :2])`."""
    batch = {
        "obs": torch.randn(4, 30, 3),
        "prev_action": torch.zeros(4, 30, 2),
        "prev_reward": torch.zeros(4, 30),
        "episode_start": torch.zeros(4, 30),
    }
    batch["action"] = action_of_obs(batch["obs"][..., :2])
    return batch


def _loss_before_and_after(model, batch, steps: int = 100) -> tuple[float, float]:
    """The model's loss on `batch`, before and after `steps` Adam steps on it."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss(batch).item()
    for _ in range(steps):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    return first, model.loss(batch).item()


def test_gaussian_loss_is_the_nll_and_decreases_with_training():
    torch.manual_seed(0)
    model = build("mamba", 3, 2, d_model=16, n_layers=1)
    first, last = _loss_before_and_after(model, _batch_acting_on_obs(torch.tanh))
    assert last < first - 1.0


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = build("transformer", 4, 2, d_model=16, window=40)
    cfg = {"d_model": 16, "window": 40}
    save_checkpoint(tmp_path / "m.pt", model, "transformer", cfg)
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt", expect_arch="transformer")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(ModelError, match="is a 'transformer' model, expected 'mamba'"):
        load_checkpoint(tmp_path / "m.pt", expect_arch="mamba")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable adbench checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(ModelError, match="unknown architecture 'lstm'.*mamba.*transformer"):
        build("lstm", 2, 2)


@pytest.mark.parametrize("scan", ["auto", "torch"])  # the native block where it runs; autograd's checkpointing
def test_mamba_layer_checkpointing_in_batch_slices_keeps_outputs_and_gradients(monkeypatch, scan):
    arch = "mamba"
    from adbench.models import recompute

    monkeypatch.setattr(recompute, "RECOMPUTE_TOKENS", 16)  # 4 sequences x 20 tokens: recomputed one by one
    monkeypatch.setenv("ADBENCH_SCAN", scan)
    torch.manual_seed(0)
    plain = build(arch, 3, 2, d_model=16, n_layers=2, window=20).backbone.double()
    sliced = build(arch, 3, 2, d_model=16, n_layers=2, window=20, checkpoint_layers=True).backbone.double()
    sliced.load_state_dict(plain.state_dict())
    x = torch.randn(4, 20, 16, dtype=torch.float64)
    outs = []
    for model in (plain, sliced):
        y = model(x)
        y.square().mean().backward()
        outs.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b)


def test_the_mamba_ssm_branch_returns_the_true_last_state_of_a_fixed_b(monkeypatch):
    """mamba_ssm's kernel returns a fixed B's last state without its factor B (seen on an H100 in
    tests/test_cuda.py); `selective_scan` multiplies it back. Here a stand-in kernel with that quirk."""
    from adbench.models import kernels

    def quirky(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        out, last = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True)
        return out, last / B

    monkeypatch.setattr(kernels, "mamba_ssm_scan", lambda: quirky)
    u, delta, A, B, C, D, z, bias = _scan_inputs(2, 4, 3, 21, variable_bc=False)
    _, last = selective_scan(u, delta, A, B, C, D, z, bias, True, return_last_state=True, impl="mamba_ssm")
    _, ref_last = selective_scan_ref(u, delta, A, B, C, D, z, bias, True, return_last_state=True)
    torch.testing.assert_close(last, ref_last)


@pytest.mark.parametrize("d_model, batch", [(16, 2), (5, 2), (16, 1)])  # d_inner 32 and 10 (a partial block);
def test_mamba_layer_on_the_native_kernels_equals_the_pytorch_path(
    monkeypatch, d_model, batch
):  # batch 1: channels split
    """The whole layer (conv + SiLU and the scan with its softplus, D and gate, all native) against
    torch's conv1d and the PyTorch scan: outputs and every gradient, in float64."""
    _needs_native("native")
    from adbench.models.mamba import Mamba

    torch.manual_seed(0)
    layer = Mamba(d_model).double()
    x = torch.randn(batch, 70, d_model, dtype=torch.float64)
    w = torch.randn(batch, 70, d_model, dtype=torch.float64)
    results = {}
    with _torch_threads(2):
        for choice in ("native", "torch"):
            monkeypatch.setenv("ADBENCH_SCAN", choice)
            leaf = x.clone().requires_grad_()
            out = layer(leaf, kernels.choose(leaf, layer.d_state))
            results[choice] = [out, *torch.autograd.grad((out * w).sum(), [leaf, *layer.parameters()])]
    for a, b in zip(results["native"], results["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("d_model, batch, threads", [(16, 4, 1), (5, 3, 2), (16, 1, 2), (40, 2, 1)])
def test_native_checkpointed_block_equals_autograd_on_the_pytorch_path(monkeypatch, d_model, batch, threads):
    """The hand-written block backward (checkpoint_layers on the native kernels) against plain autograd
    through the PyTorch scan and torch's conv1d, no checkpointing: outputs and every parameter's and
    the input's gradient, float64. 16-token slices: several slices of one sequence each (d_inner 10:
    a partial vector block; batch 1 on 2 threads: channels split; d_model 40: dt_rank 3 and five vector
    blocks)."""
    _needs_native("native")
    from adbench.models import mamba_native, recompute

    monkeypatch.setattr(recompute, "RECOMPUTE_TOKENS", 16)
    torch.manual_seed(0)
    reference = MambaBackbone(d_model, 2).double()
    native = MambaBackbone(d_model, 2, checkpoint_layers=True).double()
    native.load_state_dict(reference.state_dict())
    x = torch.randn(batch, 70, d_model, dtype=torch.float64)
    w = torch.randn(batch, 70, d_model, dtype=torch.float64)
    assert mamba_native.supported(native.layers[0], x, kernels.choose(x, 16))
    results = []
    with _torch_threads(threads):
        for model, choice in ((reference, "torch"), (native, "auto")):
            monkeypatch.setenv("ADBENCH_SCAN", choice)
            leaf = x.clone().requires_grad_()
            out = model(leaf)
            results.append([out, *torch.autograd.grad((out * w).sum(), [leaf, *model.parameters()])])
    monkeypatch.setenv("ADBENCH_SCAN", "torch")
    assert not mamba_native.supported(native.layers[0], x, kernels.choose(x, 16))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)


def test_native_checkpointed_block_in_float32_matches_float64():
    """The same model and input in float32 and float64: outputs and gradients agree to float32's
    precision (measured: within 1e-6 of each tensor's largest value)."""
    _needs_native("native")
    torch.manual_seed(0)
    model = MambaBackbone(16, 2, checkpoint_layers=True).double()
    x, w = torch.randn(2, 300, 16, dtype=torch.float64), torch.randn(2, 300, 16, dtype=torch.float64)
    results = []
    for dtype in (torch.float64, torch.float32):
        model.to(dtype)
        leaf = x.to(dtype, copy=True).requires_grad_()
        out = model(leaf)
        grads = torch.autograd.grad((out * w.to(dtype)).sum(), [leaf, *model.parameters()])
        results.append([out.double(), *(g.double() for g in grads)])
    for g64, g32 in zip(*results):
        torch.testing.assert_close(g32, g64, rtol=1e-3, atol=1e-5 * g64.abs().max().item())


def _native_scan_and_gradients(args, threads: int) -> list:
    with _torch_threads(threads):
        leaves = [a.clone().requires_grad_() for a in args]
        out = selective_scan(
            *leaves[:5], D=leaves[5], z=leaves[6], delta_bias=leaves[7], delta_softplus=True, impl="native"
        )
        return [out, *torch.autograd.grad(out.square().sum(), leaves)]


def test_native_scan_results_do_not_depend_on_the_thread_count():
    """Batch elements are split across threads, each computed whole by one: bit-identical results."""
    _needs_native("native")
    args = [a.float() for a in _scan_inputs(4, 32, 16, 150)]
    results = [_native_scan_and_gradients(args, threads) for threads in (1, 2, 3)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_the_portable_build_agrees_with_the_native_one_to_float32_rounding(monkeypatch):
    """ADBENCH_NATIVE_BUILD=portable (no -march=native, no -ffast-math) computes the scan and its gradients
    as the native build does, up to float32 rounding (docs/performance.md: what this means for tables)."""
    _needs_native("native")
    from adbench.models import scan_native

    args = [a.float() for a in _scan_inputs(2, 32, 16, 150)]
    native = _native_scan_and_gradients(args, 1)
    monkeypatch.setattr(scan_native, "_libs", {})
    monkeypatch.setenv("ADBENCH_NATIVE_BUILD", "portable")
    assert "-ffast-math" not in scan_native.build_flags() and "-march=native" not in scan_native.build_flags()
    portable = _native_scan_and_gradients(args, 1)
    for a, b in zip(native, portable):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * a.abs().max().item())
    monkeypatch.setenv("ADBENCH_NATIVE_BUILD", "fast")
    with pytest.raises(ValueError, match="ADBENCH_NATIVE_BUILD='fast': use 'native' \\(the default\\) or 'portable'"):
        scan_native.build_flags()


def test_without_a_compiler_the_scan_warns_and_falls_back_to_pytorch(monkeypatch, tmp_path):
    from adbench.models import scan_native

    monkeypatch.setattr(scan_native, "_libs", {})
    monkeypatch.setenv("ADBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    u, *_ = _scan_inputs(1, 2, 2, 5)
    with pytest.warns(UserWarning, match="building the native scan kernel .* failed"):
        assert kernels.choose(u, 2) == "torch"
    assert not list(tmp_path.glob("*.so"))


def test_native_scan_splits_channels_across_threads_for_a_single_sequence():
    """Batch 1 on 2 threads: each thread takes half the channels (their B and C gradients summed
    after), the same as one thread up to rounding, and the same from run to run."""
    _needs_native("native")
    args = [a.float() for a in _scan_inputs(1, 64, 16, 150)]
    runs = [_native_scan_and_gradients(args, threads) for threads in (1, 2, 2)]
    for a, b, c in zip(*runs):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())
        assert torch.equal(b, c)


def _scan_kernel_args():
    """Arguments of scan_native.scan_forward as Mamba passes them: float32, channel-last (b, d, l) views."""
    u, delta, A, B, C, D, z, bias = (a.float() for a in _scan_inputs(2, 16, 4, 20))
    last = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731
    return dict(
        u=last(u), delta=last(delta), At=A.t().contiguous(), Bg=B[:, None], Cg=C[:, None], D=D, z=last(z), bias=bias
    )


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("delta", lambda t: t.double(), r"delta: dtype torch.float64 \(not torch.float32\)"),
        ("D", lambda t: t[:15], r"D: shape \(15,\) \(not \(16,\)\)"),
        ("z", lambda t: t.to("meta"), r"z: device meta \(not cpu\)"),
        ("u", lambda t: t.contiguous(), r"u: strides \(320, 20, 1\) \(dimension 1 must have stride 1\)"),
        ("At", lambda t: t.t(), r"At: shape \(16, 4\) \(not \(4, 16\)\)"),
        ("bias", lambda t: t.half(), r"bias: dtype torch.float16"),
        ("Bg", lambda t: t[..., :-1], r"B: shape \(2, 1, 4, 19\) \(not \(2, 1, 4, 20\)\)"),
    ],
)
def test_native_scan_refuses_a_wrong_argument_with_a_python_error(name, change, message):
    _needs_native("native")
    from adbench.models import scan_native

    args = _scan_kernel_args()
    scan_native.scan_forward(**args, softplus=True)  # as given: accepted
    args[name] = change(args[name])
    with pytest.raises(ValueError, match="native kernel argument " + message):
        scan_native.scan_forward(**args, softplus=True)


def test_native_conv_norm_and_backward_refuse_wrong_arguments():
    _needs_native("native")
    from adbench.models import scan_native

    x, wT, bias = torch.randn(2, 9, 16), torch.randn(4, 16), torch.randn(16)
    with pytest.raises(ValueError, match=r"native kernel argument wT: dtype torch.float64"):
        scan_native.conv_forward(x, wT.double(), bias)
    with pytest.raises(ValueError, match=r"native kernel argument x: strides .* \(dimension 2 must have stride 1\)"):
        scan_native.conv_forward(x.transpose(1, 2).contiguous().transpose(1, 2), wT, bias)
    with pytest.raises(ValueError, match=r"native kernel argument gout: shape \(2, 9, 15\)"):
        scan_native.conv_backward(x, wT, bias, torch.randn(2, 9, 15))
    with pytest.raises(ValueError, match=r"native kernel argument weight: shape \(15,\) \(not \(16,\)\)"):
        scan_native.rms_norm_forward(x, torch.ones(15), 1e-5)
    with pytest.raises(ValueError, match=r"native kernel argument x: strides .* \(not contiguous\)"):
        scan_native.rms_norm_forward(x.transpose(0, 1), torch.ones(16), 1e-5)
    h, rs = scan_native.rms_norm_forward(x, torch.ones(16), 1e-5)
    with pytest.raises(ValueError, match=r"native kernel argument rs: shape \(2, 8\) \(not \(2, 9\)\)"):
        scan_native.rms_norm_backward(x, torch.ones(16), rs[:, :8], h, None, torch.empty_like(x))
    args = _scan_kernel_args()
    _, ckpt, _ = scan_native.scan_forward(**args, softplus=True)
    with pytest.raises(ValueError, match=r"native kernel argument dout: shape \(2, 16, 20\) \(not \(2, 20, 16\)\)"):
        scan_native.scan_backward(**args, softplus=True, ckpt=ckpt, dout=torch.randn(2, 16, 20))


def test_native_kernel_symbols_are_declared_with_their_argument_count():
    """A call with an argument missing is refused by ctypes (TypeError), not run on garbage."""
    _needs_native("native")
    from adbench.models import scan_native

    for dtype in (torch.float32, torch.float64):
        for name, types in scan_native.SIGNATURES.items():
            fn = scan_native._kernel(dtype, name)
            assert len(fn.argtypes) == len(types)
            with pytest.raises(TypeError):
                fn(*([0] * (len(types) - 1)))


def test_the_kernel_choice_is_logged_once_per_device_and_dtype(monkeypatch, caplog):
    from adbench.models import kernels

    monkeypatch.setattr(kernels, "_said", set())
    monkeypatch.setenv("ADBENCH_SCAN", "torch")
    with caplog.at_level("INFO", logger="adbench.models.kernels"):
        for _ in range(3):
            assert kernels.choose(torch.zeros(2), d_state=16) == "torch"
        kernels.choose(torch.zeros(2, dtype=torch.float64))
    assert [r.getMessage() for r in caplog.records] == [
        "Mamba kernels for cpu float32: torch",
        "Mamba kernels for cpu float64: torch",
    ]


def test_clipped_gaussian_nll_is_the_censored_likelihood():
    mean = torch.tensor([0.3, 0.3, 0.3, -2.0, 1.5], dtype=torch.float64)
    log_std = torch.tensor([0.0, 0.5, -1.0, 0.2, -0.3], dtype=torch.float64)
    target = torch.tensor([0.1, 1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    normal = torch.distributions.Normal(mean, log_std.exp())
    above = -torch.log(1 - normal.cdf(torch.tensor(1.0, dtype=torch.float64)))  # on the upper bound: P(x >= 1)
    below = -torch.log(normal.cdf(torch.tensor(-1.0, dtype=torch.float64)))  # on the lower bound: P(x <= -1)
    inside = -normal.log_prob(target)  # inside the box: the density
    expected = torch.stack([inside[0], above[1], below[2], below[3], above[4]])
    torch.testing.assert_close(clipped_gaussian_nll(target, mean, log_std), expected)
    # far out in a tail the mass stays finite (log_ndtr), where 1 - cdf would round to 0
    far = clipped_gaussian_nll(torch.tensor([1.0]), torch.tensor([-30.0]), torch.tensor([0.0]))
    assert torch.isfinite(far).all() and far.item() > 400


def test_clipped_gaussian_fit_recovers_the_noise_a_plain_gaussian_underestimates():
    """Actions clip(0.4 + 2 N(0, 1)): mostly on the bounds. Fitting a mean and a log-std by the
    clipped likelihood recovers 0.4 and 2; the plain Gaussian likelihood fits a far narrower spread."""
    gen = torch.Generator().manual_seed(0)
    actions = (0.4 + 2.0 * torch.randn(20000, generator=gen)).clamp(-1.0, 1.0)
    assert ((actions.abs() == 1.0).float().mean() > 0.5).item()

    def fit(nll):
        mean, log_std = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([mean, log_std], lr=0.05)
        for _ in range(600):
            opt.zero_grad()
            nll(actions, mean, log_std).mean().backward()
            opt.step()
        return mean.item(), log_std.exp().item()

    mean, std = fit(clipped_gaussian_nll)
    assert abs(mean - 0.4) < 0.08 and abs(std - 2.0) < 0.15
    plain_mean, plain_std = fit(gaussian_nll)
    assert plain_std < 1.0  # the sample standard deviation of the clipped actions (~0.85)


def test_clipped_gaussian_head_trains_on_the_clipped_likelihood():
    torch.manual_seed(0)
    model = build("transformer", 3, 2, d_model=16, n_layers=1, head="clipped_gaussian")
    assert model.head.out_features == 4  # a mean and a log-std per action, as the Gaussian head
    batch = _batch_acting_on_obs(lambda x: (2 * x).clamp(-1, 1))
    mean, log_std = model(batch["obs"], batch["prev_action"], batch["prev_reward"], batch["episode_start"])
    torch.testing.assert_close(model.loss(batch), clipped_gaussian_nll(batch["action"], mean, log_std).mean())
    first, last = _loss_before_and_after(model, batch)
    assert last < first - 0.5


def test_mixture_nll_is_the_mixtures_negative_log_likelihood():
    torch.manual_seed(0)
    mean, log_std, logits = torch.randn(5, 3, 2), 0.3 * torch.randn(5, 3, 2), torch.randn(5, 3)
    target = torch.randn(5, 2)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1),
    )
    constant = 2 * 0.5 * math.log(2 * math.pi)  # act_dim x log(2 pi) / 2, left out as gaussian_nll leaves it out
    torch.testing.assert_close(mixture_nll(target, mean, log_std, logits), -mixture.log_prob(target) - constant)
    # one component: the Gaussian's NLL
    one = mixture_nll(target, mean[:, :1], log_std[:, :1], logits[:, :1])
    torch.testing.assert_close(one, gaussian_nll(target, mean[:, 0], log_std[:, 0]).sum(-1))


def test_a_mixture_head_keeps_two_modes_that_a_gaussian_averages():
    """Actions +0.8 or -0.8 at random, whatever the observation: the Gaussian head's mean settles
    near 0 (an action no data took); the mixture's samples sit near the two modes, each about half
    the time, and its step-by-step parameters are those of the whole sequence."""
    torch.manual_seed(0)
    sign = torch.where(torch.rand(4, 30, 1) < 0.5, -1.0, 1.0)
    batch = _batch_acting_on_obs(lambda x: 0.8 * sign.expand(-1, -1, 2))
    gaussian = build("transformer", 3, 2, d_model=16, n_layers=1)
    torch.manual_seed(0)  # a fit that finds both modes (from some starts one broad component wins)
    mixture = build("transformer", 3, 2, d_model=16, n_layers=1, head="gaussian_mixture", mixture_components=2)
    assert mixture.head.out_features == 2 * (2 * 2 + 1)
    for model in (gaussian, mixture):
        _loss_before_and_after(model, batch, steps=300)
    inputs = (batch["obs"], batch["prev_action"], batch["prev_reward"], batch["episode_start"])
    with torch.no_grad():
        assert gaussian(*inputs)[0].abs().mean() < 0.3
        mean, log_std, logits = mixture(*inputs)
        state = mixture.init_state(4)
        for t in range(30):
            *head, state = mixture.step(*(x[:, t] for x in inputs), state)
            for got, want in zip(head, (mean[:, t], log_std[:, t], logits[:, t])):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    gen = torch.Generator().manual_seed(1)
    rows = (mean[:, 5].repeat(500, 1, 1), log_std[:, 5].repeat(500, 1, 1), logits[:, 5].repeat(500, 1))
    actions = mixture.act(rows, sample=True, generator=gen)
    assert (actions.abs() > 0.5).float().mean() > 0.9
    assert 0.3 < (actions[:, 0] > 0).float().mean() < 0.7


def test_a_mixture_acts_by_its_weights_or_on_its_most_probable_component():
    model = build("mamba", 3, 1, d_model=16, n_layers=1, head="gaussian_mixture", mixture_components=2)
    n = 4000
    mean = torch.tensor([[-1.0], [1.0]]).expand(n, 2, 1)
    log_std, logits = torch.full((n, 2, 1), -5.0), torch.log(torch.tensor([0.25, 0.75])).expand(n, 2)
    sampled = model.act((mean, log_std, logits), sample=True, generator=torch.Generator().manual_seed(0))
    assert (sampled > 0).float().mean().item() == pytest.approx(0.75, abs=0.03)
    assert torch.equal(model.act((mean, log_std, logits), sample=False), torch.ones(n, 1))
