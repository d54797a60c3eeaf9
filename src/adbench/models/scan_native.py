"""The selective scan as a small C kernel (scan_native.c), channel-last, built on first use.

Lanes of the CPU's vector unit are consecutive channels, so the state sums are vertical adds (and,
in float32, the exp is an inlined polynomial); tensors stay in the (batch, length, channels) layout that Mamba's
projections produce, so nothing is transposed on the way in or out. Forward writes the gated output
and one state checkpoint per chunk; backward recomputes each chunk's states from its checkpoint and
runs the adjoint recurrence in reverse, giving every gradient (u, dt, A, B, C, D, z) in one pass.

The library is compiled with the system's C compiler (gcc or cc, -O3 -march=native -ffast-math
-fopenmp) into a cache folder keyed by the source, the flags and the CPU, and loaded with ctypes.
`ADBENCH_NATIVE_BUILD=portable` builds it without CPU-specific instructions or fast-math instead
(IEEE arithmetic, the same code on every x86-64 CPU): slower, and how far its results are from the
native build's is tested (tests/test_models.py) and stated in docs/performance.md.
Work is split over torch's thread count (batch elements, or channel blocks) and run on OpenMP
threads: the loader gives the library the libgomp.so.1 that torch has already loaded, so the kernels
share torch's warm thread pool instead of competing with its spinning workers. Where no compiler is found or the
build fails, `library()` returns None and `kernels.choose` picks the PyTorch implementations.

Each kernel symbol is declared with its C argument types (`SIGNATURES`), and every entry point checks
its tensors' dtype, device, shape and layout first, so that a wrong argument raises a ValueError
naming it instead of corrupting memory.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("scan_native.c")
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp", "-fPIC", "-shared"]
PORTABLE_FLAGS = ["-O3", "-fopenmp", "-fPIC", "-shared", "-Wno-psabi"]  # ADBENCH_NATIVE_BUILD=portable


def build_flags() -> list:
    """The compiler flags of this process's build: native (default) or portable."""
    build = os.environ.get("ADBENCH_NATIVE_BUILD", "native")
    if build not in ("native", "portable"):
        raise ValueError(f"ADBENCH_NATIVE_BUILD={build!r}: use 'native' (the default) or 'portable'")
    return PORTABLE_FLAGS if build == "portable" else FLAGS


# dtype -> (vector lanes, symbol suffix, defines): float32 with the inlined exp, float64 with libm's
VARIANTS = {
    torch.float32: (16, "_f32", ["-DREAL=float", "-DW=16", "-DSUFFIX=_f32", "-DEXP=expf", "-DINLINE_EXP"]),
    torch.float64: (8, "_f64", ["-DREAL=double", "-DW=8", "-DSUFFIX=_f64", "-DEXP=exp"]),
}
CHUNK = 64  # time steps per checkpoint (at most the kernel's MAXCHUNK)
MAX_STATE = 64  # the kernel's MAXN
_libs: dict = {}


def _cache_dir() -> Path:
    root = os.environ.get("ADBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "adbench"
    )
    return Path(root)


def _cpu_key() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(sorted({line for line in f if line.startswith(("model name", "flags"))}))
    except OSError:
        return os.uname().machine


def _build(dtype) -> Path | None:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        warnings.warn(
            "no C compiler (gcc or cc) found: Mamba runs on the PyTorch scan; install gcc for the "
            "faster native kernels",
            stacklevel=3,
        )
        return None
    _, suffix, defines = VARIANTS[dtype]
    flags = build_flags() + defines
    try:
        source = SOURCE.read_bytes()
    except OSError:
        warnings.warn(
            f"{SOURCE} is missing (an install without package data?): Mamba runs on the PyTorch scan", stacklevel=3
        )
        return None
    key = hashlib.sha256(source + " ".join([compiler] + flags).encode() + _cpu_key().encode())
    path = _cache_dir() / f"scan_native{suffix}-{key.hexdigest()[:16]}.so"
    if path.exists():
        return path
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)  # built aside, renamed when complete
        os.close(fd)
        subprocess.run(
            [compiler, *flags, str(SOURCE), "-o", tmp, "-lm"], check=True, capture_output=True, text=True, timeout=120
        )
        os.replace(tmp, path)
    except (subprocess.SubprocessError, OSError) as e:
        detail = (getattr(e, "stderr", None) or str(e)).strip().splitlines()
        warnings.warn(
            f"building the native scan kernel with {compiler} in {path.parent} failed "
            f"({detail[0] if detail else e}); set ADBENCH_CACHE to a writable folder or install gcc. "
            "Mamba runs on the PyTorch scan meanwhile",
            stacklevel=3,
        )
        return None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


_I, _P, _IP = ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
_REAL = object()  # the variant's float type
_UNITS = [_I, _IP]  # (nunits, units): every kernel's head
SIGNATURES = {
    "scan_forward_": _UNITS
    + [_I, _I, _I, _I, _P, _I, _I, _P, _I, _I, _P, ctypes.c_int, _P, _P, _IP, _P, _IP, _P, _P, _I, _I]
    + [_P, _P, _P, _I],
    "scan_backward_": _UNITS
    + [_I, _I, _I, _I, _P, _I, _I, _P, _I, _I, _P, ctypes.c_int, _P, _P, _IP, _P, _IP, _P, _P, _I, _I]
    + [_P, _P, _P, _P, _P, _I, _I, _P, _P, _P, _P, _I, _P, _P, _I],
    "conv_silu_forward_": _UNITS + [_I, _I, _I, _P, _I, _I, _P, _P, _P],
    "conv_silu_backward_": _UNITS + [_I, _I, _I, _P, _I, _I, _P, _P, _P, _P, _I, _I, _P, _P],
    "rms_norm_forward_": _UNITS + [_I, _P, _P, _REAL, _P, _P],
    "rms_norm_backward_": _UNITS + [_I, _P, _P, _P, _P, _P, _P, _P],
}


def _declare(lib, dtype) -> None:
    """Give every kernel symbol its argument types (ctypes then refuses a call with the wrong count)."""
    real = ctypes.c_float if dtype == torch.float32 else ctypes.c_double
    for name, types in SIGNATURES.items():
        fn = getattr(lib, name + VARIANTS[dtype][1])
        fn.argtypes = [real if t is _REAL else t for t in types]
        fn.restype = None


def library(dtype):
    """The compiled kernels for float32 or float64 (a ctypes CDLL), or None where they cannot be built."""
    if dtype not in VARIANTS:
        return None
    if dtype not in _libs:
        path = _build(dtype)
        lib = None
        if path is not None:
            try:
                lib = ctypes.CDLL(str(path))
                _declare(lib, dtype)
            except (OSError, AttributeError):
                lib = None
        _libs[dtype] = lib
    return _libs[dtype]


def _check(name: str, t, dtype, shape, unit_stride: int | None = None, any_strides: bool = False) -> None:
    """Raise a ValueError naming `name` unless t is a CPU tensor of `dtype` and `shape` that is contiguous
    or, where `unit_stride` is given, has stride 1 along that dimension (the kernels read it so), or
    has any strides (`any_strides`: the kernel is given them)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"native kernel argument {name}: expected a tensor, got {type(t).__name__}")
    problems = []
    if t.device.type != "cpu":
        problems.append(f"device {t.device} (not cpu)")
    if t.dtype != dtype or dtype not in VARIANTS:
        problems.append(f"dtype {t.dtype} (not {dtype if dtype in VARIANTS else 'float32 or float64'})")
    if tuple(t.shape) != tuple(shape):
        problems.append(f"shape {tuple(t.shape)} (not {tuple(shape)})")
    elif unit_stride is None and not any_strides and not t.is_contiguous():
        problems.append(f"strides {t.stride()} (not contiguous)")
    elif unit_stride is not None and t.shape[unit_stride] > 1 and t.stride(unit_stride) != 1:
        problems.append(f"strides {t.stride()} (dimension {unit_stride} must have stride 1)")
    if problems:
        raise ValueError(f"native kernel argument {name}: " + ", ".join(problems))


def runs_on(x: torch.Tensor) -> bool:
    """Whether the kernels run on tensors like x: a float32 or float64 CPU tensor, the library built."""
    return x.device.type == "cpu" and x.dtype in VARIANTS and library(x.dtype) is not None


def supports(u, B, C) -> bool:
    """Whether the scan kernel takes these inputs: `runs_on(u)`, variable B and C, a state size it
    holds, and channel groups that are whole vector blocks."""
    if B.dim() < 3 or C.dim() < 3 or B.shape[-2] > MAX_STATE or u.dtype not in VARIANTS:
        return False
    lanes = VARIANTS[u.dtype][0]
    for x in (B, C):
        if x.dim() == 4 and x.shape[1] > 1 and (u.shape[1] // x.shape[1]) % lanes:
            return False
    return runs_on(u)


def _check_optional(name: str, t, dtype, shape, unit_stride: int | None = None) -> None:
    if t is not None:
        _check(name, t, dtype, shape, unit_stride)


def _check_scan(u, delta, At, Bg, Cg, D, z, bias) -> None:
    """The arguments the scan kernels share: u, delta, z (b, d, l) with channel stride 1; At (n, d); Bg, Cg
    (b, g, n, l) with any strides, one grouping g that divides d; D, bias (d,)."""
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError("native kernel argument u: expected a (batch, channels, length) tensor")
    dtype, (b, d, length) = u.dtype, u.shape
    if not isinstance(Bg, torch.Tensor) or Bg.dim() != 4:
        raise ValueError("native kernel argument B: expected a (batch, groups, state, length) tensor")
    g, n = Bg.shape[1], Bg.shape[2]
    if n > MAX_STATE or g == 0 or d % g:
        raise ValueError(
            f"native kernel arguments: state size {n} (at most {MAX_STATE}) and {g} groups of {d} channels"
        )
    _check("u", u, dtype, (b, d, length), unit_stride=1)
    _check("delta", delta, dtype, (b, d, length), unit_stride=1)
    _check("At", At, dtype, (n, d))
    _check("B", Bg, dtype, (b, g, n, length), any_strides=True)
    _check("C", Cg, dtype, (b, g, n, length), any_strides=True)
    _check("D", D, dtype, (d,))
    _check_optional("z", z, dtype, (b, d, length), unit_stride=1)
    _check_optional("bias", bias, dtype, (d,))


def _channel_last(t: torch.Tensor) -> torch.Tensor:
    """(b, d, l) with channel stride 1 (a view of (b, l, d) memory), copying only if it is not so."""
    if t.stride(1) == 1 and t.stride(2) >= t.shape[1]:
        return t
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def _groups(x: torch.Tensor) -> torch.Tensor:
    return x[:, None] if x.dim() == 3 else x  # (b, g, n, l)


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


def _strides(t):
    return (ctypes.c_int64 * 4)(*t.stride())


def _ints(*values):
    return [ctypes.c_int64(v) for v in values]


def _time_strides(t):
    """(batch stride, time stride) of a (b, d, l) channel-last tensor, or zeros for None."""
    return (t.stride(0), t.stride(2)) if t is not None else (0, 0)


def _scan_head(u, delta, bias, softplus, At, Bg, Cg, D, z) -> list:
    """The arguments scan_forward_ and scan_backward_ share, after the work unit."""
    b, d, length = u.shape
    return [
        *_ints(length, d, Bg.shape[2], Bg.shape[1]),
        _ptr(u),
        *_ints(u.stride(0), u.stride(2)),
        _ptr(delta),
        *_ints(delta.stride(0), delta.stride(2)),
        _ptr(bias),
        ctypes.c_int(softplus),
        _ptr(At),
        _ptr(Bg),
        _strides(Bg),
        _ptr(Cg),
        _strides(Cg),
        _ptr(D),
        _ptr(z),
        *_ints(*_time_strides(z)),
    ]


def _kernel(dtype, name: str):
    return getattr(library(dtype), name + VARIANTS[dtype][1])


def _split(n: int, parts: int) -> list:
    """[lo, hi) ranges cutting range(n) into min(parts, n) near-equal pieces (one where n is 0)."""
    parts = max(1, min(parts, n))
    return [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]


def _units(batch: int, d: int, lanes: int) -> list:
    """(b0, b1, c_lo, c_hi) pieces of work, one per thread of torch's count: batch elements split
    across threads or, where there are fewer than threads, blocks of channels."""
    threads = max(1, torch.get_num_threads())
    if batch >= threads:
        return [(b0, b1, 0, d) for b0, b1 in _split(batch, threads)]
    blocks = -(-d // lanes)
    return [(0, batch, lo * lanes, min(d, hi * lanes)) for lo, hi in _split(blocks, threads)]


def _unit_args(units: list) -> list:
    """The (nunits, units) head of every kernel call: the kernel runs the units on OpenMP threads."""
    return [ctypes.c_int64(len(units)), (ctypes.c_int64 * (4 * len(units)))(*[v for unit in units for v in unit])]


def scan_forward(u, delta, At, Bg, Cg, D, z, bias, softplus: bool, ckpt=None):
    """The forward kernel. u, delta, z: (b, d, l) with channel stride 1; At: (n, d); Bg, Cg: (b, g, n, l);
    D, bias: (d,) (bias and z may be None). Returns out (b, l, d), the chunk states ckpt (b, chunks, n, d)
    (written into `ckpt` where given) and the last state (b, n, d)."""
    _check_scan(u, delta, At, Bg, Cg, D, z, bias)
    dtype, (b, d, length), n = u.dtype, u.shape, Bg.shape[2]
    out, last = u.new_empty(b, length, d), u.new_empty(b, n, d)
    if ckpt is None:
        ckpt = u.new_empty(b, (length + CHUNK - 1) // CHUNK, n, d)
    _check("ckpt", ckpt, dtype, (b, (length + CHUNK - 1) // CHUNK, n, d))
    _kernel(dtype, "scan_forward_")(
        *_unit_args(_units(b, d, VARIANTS[dtype][0])),
        *_scan_head(u, delta, bias, softplus, At, Bg, Cg, D, z),
        _ptr(out),
        _ptr(ckpt),
        _ptr(last),
        *_ints(CHUNK),
    )
    return out, ckpt, last


def scan_backward(u, delta, At, Bg, Cg, D, z, bias, softplus: bool, ckpt, dout, dz=None, y=None):
    """The backward kernel, from the forward's inputs and chunk states and dout (b, l, d) contiguous.
    Returns du, ddelta (b, l, d), dz (written into `dz` where given: (b, l, d), channel stride 1, else
    new; None without z), dA (n, d), dB, dC (b, g, l, n), dD and dbias (d,). Where `y` (b, l, d) is
    given, the forward's output is recomputed into it."""
    _check_scan(u, delta, At, Bg, Cg, D, z, bias)
    dtype, (b, d, length), n, g = u.dtype, u.shape, Bg.shape[2], Bg.shape[1]
    _check("ckpt", ckpt, dtype, (b, (length + CHUNK - 1) // CHUNK, n, d))
    _check("dout", dout, dtype, (b, length, d))
    _check_optional("dz", dz, dtype, (b, length, d), unit_stride=2)
    _check_optional("y", y, dtype, (b, length, d))
    du, ddelta = u.new_empty(b, length, d), u.new_empty(b, length, d)
    if z is not None and dz is None:
        dz = u.new_empty(b, length, d)
    dA, dD, dbias = u.new_empty(b, n, d), u.new_empty(b, d), u.new_empty(b, d)
    units = _units(b, d, VARIANTS[dtype][0])
    # B and C are shared by all channels: units that split the channels each sum into their own copy
    copies = 1 if units[0][2:] == (0, d) else len(units)
    dB, dC = u.new_zeros(copies, b, g, length, n), u.new_zeros(copies, b, g, length, n)
    _kernel(dtype, "scan_backward_")(
        *_unit_args(units),
        *_scan_head(u, delta, bias, softplus, At, Bg, Cg, D, z),
        _ptr(ckpt),
        _ptr(dout),
        _ptr(du),
        _ptr(ddelta),
        _ptr(dz),
        *_ints(*(dz.stride()[:2] if dz is not None else (0, 0))),
        _ptr(y),
        _ptr(dA),
        _ptr(dB),
        _ptr(dC),
        ctypes.c_int64(dB[0].numel() if copies > 1 else 0),
        _ptr(dD),
        _ptr(dbias),
        *_ints(CHUNK),
    )
    dB, dC = (x[0] if copies == 1 else x.sum(0) for x in (dB, dC))
    return du, ddelta, dz, dA.sum(0), dB, dC, dD.sum(0), dbias.sum(0)


class NativeScan(torch.autograd.Function):
    """out = (C h + D u) * silu(z) along the S6 recurrence, with dt = softplus(delta + bias) (or without
    the softplus); bias and z may be None."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, softplus):
        u, delta = _channel_last(u), _channel_last(delta)
        z = _channel_last(z) if z is not None else None
        Bg, Cg = _groups(B), _groups(C)
        g = max(Bg.shape[1], Cg.shape[1])
        if Bg.shape[1] != Cg.shape[1]:  # the kernel takes one grouping for both
            Bg, Cg = (x.repeat_interleave(g // x.shape[1], dim=1) for x in (Bg, Cg))
        At = A.t().contiguous()
        out, ckpt, last = scan_forward(u, delta, At, Bg, Cg, D, z, bias, softplus)
        ctx.save_for_backward(u, delta, At, Bg, Cg, D, z, bias, ckpt)
        ctx.shapes, ctx.softplus = (B.dim(), C.dim(), _groups(B).shape[1], _groups(C).shape[1]), softplus
        return out.transpose(1, 2), last.transpose(1, 2)

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, At, Bg, Cg, D, z, bias, ckpt = ctx.saved_tensors
        if dlast is not None and dlast.abs().max() > 0:
            raise NotImplementedError("the native scan does not backpropagate through last_state; use the PyTorch scan")
        dout = dout.to(u.dtype).transpose(1, 2).contiguous()  # (b, l, d): no copy when it comes channel-last
        du, ddelta, dz, dA, dB, dC, dD, dbias = scan_backward(
            u, delta, At, Bg, Cg, D, z, bias, ctx.softplus, ckpt, dout
        )
        g = Bg.shape[1]
        b_dim, c_dim, b_groups, c_groups = ctx.shapes
        dB, dC = dB.transpose(-1, -2), dC.transpose(-1, -2)  # (b, g, n, l)
        if b_groups != g:
            dB = dB.unflatten(1, (b_groups, g // b_groups)).sum(2)
        if c_groups != g:
            dC = dC.unflatten(1, (c_groups, g // c_groups)).sum(2)
        return (
            du.transpose(1, 2),
            ddelta.transpose(1, 2),
            dA.t(),
            dB[:, 0] if b_dim == 3 else dB,
            dC[:, 0] if c_dim == 3 else dC,
            dD,
            dz.transpose(1, 2) if dz is not None else None,
            dbias if bias is not None else None,
            None,
        )


def native_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """(out, last_state) with the semantics of scan.selective_scan_ref, in u's dtype (float32 or float64)."""
    dtype = u.dtype
    D_ = D.to(dtype).contiguous() if D is not None else u.new_zeros(u.shape[1])
    bias = delta_bias.to(dtype).contiguous() if delta_bias is not None else None
    return NativeScan.apply(
        u,
        delta.to(dtype),
        A.to(dtype),
        B.to(dtype),
        C.to(dtype),
        D_,
        z.to(dtype) if z is not None else None,
        bias,
        bool(delta_softplus),
    )


def _conv_units(batch: int, length: int) -> list:
    """(b0, b1, t_lo, t_hi) pieces of work for the conv kernels, one per thread of torch's count: batch
    elements split across threads or, where there are fewer than threads, the steps."""
    threads = max(1, torch.get_num_threads())
    if batch >= threads:
        return [(b0, b1, 0, length) for b0, b1 in _split(batch, threads)]
    return [(0, batch, t_lo, t_hi) for t_lo, t_hi in _split(length, threads)]


def _check_conv(x, wT, bias) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or not isinstance(wT, torch.Tensor) or wT.dim() != 2:
        raise ValueError("native kernel arguments x, wT: expected (batch, length, channels) and (width, channels)")
    _check("x", x, x.dtype, x.shape, unit_stride=2)
    _check("wT", wT, x.dtype, (wT.shape[0], x.shape[2]))
    _check("bias", bias, x.dtype, (x.shape[2],))


def conv_forward(x, wT, bias):
    """silu(causal depthwise conv(x) + bias): x (b, l, d) with channel stride 1, wT (K, d) -> (b, l, d)."""
    _check_conv(x, wT, bias)
    dtype, (b, length, d), k = x.dtype, x.shape, wT.shape[0]
    out = x.new_empty(b, length, d)
    _kernel(dtype, "conv_silu_forward_")(
        *_unit_args(_conv_units(b, length)),
        *_ints(length, d, k),
        _ptr(x),
        *_ints(x.stride(0), x.stride(1)),
        _ptr(wT),
        _ptr(bias),
        _ptr(out),
    )
    return out


def conv_backward(x, wT, bias, gout, dx=None):
    """Gradients of conv_forward for gout (b, l, d) contiguous: dx (written into `dx` where given:
    (b, l, d), channel stride 1), dwT (K, d) and dbias (d,)."""
    _check_conv(x, wT, bias)
    dtype, (b, length, d), k = x.dtype, x.shape, wT.shape[0]
    _check("gout", gout, dtype, (b, length, d))
    _check_optional("dx", dx, dtype, (b, length, d), unit_stride=2)
    dx = x.new_empty(b, length, d) if dx is None else dx
    units = _conv_units(b, length)
    dwT, dbias = x.new_empty(len(units), k, d), x.new_empty(len(units), d)
    _kernel(dtype, "conv_silu_backward_")(
        *_unit_args(units),
        *_ints(length, d, k),
        _ptr(x),
        *_ints(x.stride(0), x.stride(1)),
        _ptr(wT),
        _ptr(bias),
        _ptr(gout),
        _ptr(dx),
        *_ints(dx.stride(0), dx.stride(1)),
        _ptr(dwT),
        _ptr(dbias),
    )
    return dx, dwT.sum(0), dbias.sum(0)


def _row_units(rows: int) -> list:
    """(r0, r1, 0, 0) pieces of work: rows split across torch's threads."""
    return [(r0, r1, 0, 0) for r0, r1 in _split(rows, torch.get_num_threads())]


def _real(dtype, value: float):
    return (ctypes.c_float if dtype == torch.float32 else ctypes.c_double)(value)


def _check_norm(x, weight) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise ValueError("native kernel argument x: expected a tensor of rows (..., width)")
    _check("x", x, x.dtype, x.shape)
    _check("weight", weight, x.dtype, (x.shape[-1],))


def rms_norm_forward(x, weight, eps: float):
    """RMSNorm of x (..., m) contiguous: h = x rs weight and rs = (mean(x^2) + eps)^-1/2 (x.shape[:-1])."""
    _check_norm(x, weight)
    h, rs = torch.empty_like(x), x.new_empty(x.shape[:-1])
    rows = rs.numel()
    _kernel(x.dtype, "rms_norm_forward_")(
        *_unit_args(_row_units(rows)),
        *_ints(x.shape[-1]),
        _ptr(x),
        _ptr(weight),
        _real(x.dtype, eps),
        _ptr(h),
        _ptr(rs),
    )
    return h, rs


def rms_norm_backward(x, weight, rs, dh, gin, gx):
    """RMSNorm's backward for dh (the gradient of h, contiguous like x): writes gin + dx into gx (contiguous;
    gin, the gradient arriving by the residual, may be gx itself, or None for none) and returns weight's
    gradient."""
    _check_norm(x, weight)
    _check("rs", rs, x.dtype, x.shape[:-1])
    _check("dh", dh, x.dtype, x.shape)
    _check_optional("gin", gin, x.dtype, x.shape)
    _check("gx", gx, x.dtype, x.shape)
    units = _row_units(rs.numel())
    dw = x.new_empty(len(units), x.shape[-1])
    _kernel(x.dtype, "rms_norm_backward_")(
        *_unit_args(units),
        *_ints(x.shape[-1]),
        _ptr(x),
        _ptr(weight),
        _ptr(rs),
        _ptr(dh),
        _ptr(gin),
        _ptr(gx),
        _ptr(dw),
    )
    return dw.sum(0)


class NativeRMSNorm(torch.autograd.Function):
    """x (..., m) * (mean(x^2) + eps)^-1/2 * weight."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        x = x.contiguous()
        h, rs = rms_norm_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rs)
        return h

    @staticmethod
    def backward(ctx, gh):
        x, weight, rs = ctx.saved_tensors
        gx = torch.empty_like(x)
        dw = rms_norm_backward(x, weight, rs, gh.to(x.dtype).contiguous(), None, gx)
        return gx, dw, None


class NativeConvSilu(torch.autograd.Function):
    """silu(causal depthwise conv1d(x) + bias) on channel-last x (b, l, d); weight (d, 1, K)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        d, k = weight.shape[0], weight.shape[-1]
        if x.stride(2) != 1:
            x = x.contiguous()
        wT, bias = weight.reshape(d, k).t().contiguous(), bias.contiguous()
        ctx.save_for_backward(x, wT, bias)
        return conv_forward(x, wT, bias)

    @staticmethod
    def backward(ctx, gout):
        x, wT, bias = ctx.saved_tensors
        dx, dwT, dbias = conv_backward(x, wT, bias, gout.to(x.dtype).contiguous())
        return dx, dwT.t().reshape(-1, 1, wT.shape[0]), dbias
