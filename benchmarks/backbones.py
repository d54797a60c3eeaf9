"""Backbone cost against sequence length: forward+backward seconds and peak memory for training,
and milliseconds per recurrent step for inference, for our Mamba and transformer (equal parameter
counts) and mambapy as a pure-PyTorch peer. Each measurement runs in its own process, set up as the
training stage sets itself up (`adbench.process.setup`: torch's thread count, which the native
kernels share, and glibc's allocator thresholds), on one thread unless --threads says otherwise.

    pip install mambapy==1.2.0   # the peer, for this benchmark only
    python benchmarks/backbones.py [--lengths 1024 4096 16384] [--archs mamba transformer mambapy]
                                   [--json OUT] [--memory-limit-gib 16] [--timeout 600] [--threads 1]
                                   [--device cuda] [--modes train step] [--repeats 1]

With --repeats N each measurement runs N times (each in its own process); the table shows the
median time (and the range in the JSON records, as `fwd_bwd_s_runs` / `step_ms_runs`).

On CUDA (--device cuda) the Mamba rows use mamba_ssm's kernels where it is installed and the
PyTorch scan otherwise (ADBENCH_SCAN=torch forces the latter): the "scan" column says which ran.

Peak memory is the process's peak resident set (ru_maxrss) minus its resident set before the model
was built, or on CUDA the peak of torch's allocator. "matmul s" is the floor a matmul-bound model would
hit: 6 x (weights in matrices) x tokens FLOPs at the matmul rate measured in the same process (the best
of five timings of a square product); "x matmul" is fwd+bwd over that floor.
Step time is measured with a full inference state: the transformer's KV cache holding
L tokens, Mamba's fixed-size conv and SSM state.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

D_MODEL, LAYERS, BATCH, OBS, ACT = 128, 4, 8, 16, 4


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(arch: str, length: int, mode: str, threads: int, device: str = "cpu") -> dict:
    import torch

    from adbench import process

    process.setup(threads)  # as the training and evaluation stages set themselves up
    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    base = rss_mib()
    record = {
        "arch": arch,
        "impl": "adbench" if arch != "mambapy" else "mambapy",
        "L": length,
        "batch": BATCH,
        "d_model": D_MODEL,
        "layers": LAYERS,
        "device": device,
        "scan": "-",
        "fwd_bwd_s": None,
        "peak_mib": None,
        "step_ms": None,
    }
    if arch == "mambapy":
        from mambapy.mamba import Mamba, MambaConfig

        model = Mamba(MambaConfig(d_model=D_MODEL, n_layers=LAYERS))
        record["params"] = sum(p.numel() for p in model.parameters())
        run = lambda x: model(x)  # noqa: E731
    else:
        from adbench.models import build

        policy = build(arch, OBS, ACT, d_model=D_MODEL, n_layers=LAYERS, window=length, checkpoint_layers=True)
        model = policy.backbone
        record["params"] = sum(p.numel() for p in model.parameters())
        run = lambda x: model(x)  # noqa: E731
        if arch == "mamba":
            from adbench.models import kernels

            record["scan"] = kernels.choose(torch.zeros(1, device=dev), policy.backbone.layers[0].mixer.d_state)
    model.to(dev)
    if mode == "train":
        x = torch.randn(BATCH, length, D_MODEL, device=dev)
        run(x[:, :64]).sum().backward()  # warm-up
        if cuda:  # and a full-size one: CUDA's first call at a size pays for autotuning and allocation
            run(x).square().mean().backward()
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev) / 2**20
        sync()
        t0 = time.perf_counter()
        run(x).square().mean().backward()
        sync()
        record["fwd_bwd_s"] = time.perf_counter() - t0
        if cuda:
            record["peak_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20 - base
        else:
            record["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
        # matmul work of forward + backward: 6 FLOPs per weight per token (2 forward, 4 backward)
        weights = sum(p.numel() for p in model.parameters() if p.dim() == 2)
        record["matmul_gflop"] = 6 * weights * BATCH * length / 1e9
        # the matmul rate: the best of 5 timings of 5 square products (one timing swung 73-104 GFLOP/s on a
        # shared VM; the best is the rate the machine can reach, which makes the floor the harder one)
        size = 4096 if cuda else 1024
        a = torch.randn(size, size, device=dev)
        a @ a
        best = float("inf")
        for _ in range(5):
            sync()
            t0 = time.perf_counter()
            for _ in range(5):
                a @ a
            sync()
            best = min(best, time.perf_counter() - t0)
        record["matmul_gflops_rate"] = 5 * 2 * size**3 / best / 1e9
    else:
        state = model.init_state(1, dev)
        if arch == "transformer":  # a full cache: L tokens already seen
            state["pos"] = length
            for k, v in state["kv"]:
                k.normal_(), v.normal_()
        x = torch.randn(1, D_MODEL, device=dev)
        with torch.no_grad():
            for _ in range(20):
                model.step(x, state)
            sync()
            t0, n = time.perf_counter(), 200
            for _ in range(n):
                _, state = model.step(x, state)
            sync()
        record["step_ms"] = (time.perf_counter() - t0) / n * 1e3
    return record


def median_record(runs: list) -> dict:
    """The run with the median time, with every run's time kept beside it."""
    key = "fwd_bwd_s" if runs[0]["fwd_bwd_s"] is not None else "step_ms"
    ordered = sorted(runs, key=lambda r: r[key])
    return {**ordered[(len(ordered) - 1) // 2], f"{key}_runs": [r[key] for r in runs]}


def run_isolated(
    arch: str, length: int, mode: str, limit_gib: float, timeout: float, threads: int, device: str
) -> dict:
    cmd = [sys.executable, __file__, "--one", arch, str(length), mode, str(limit_gib), str(threads), device]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"arch": arch, "L": length, "mode": mode, "error": f"timeout > {timeout:.0f} s"}
    if out.returncode != 0:
        reason = (
            "out of memory"
            if "MemoryError" in out.stderr or "alloc" in out.stderr.lower()
            else out.stderr.strip().splitlines()[-1:]
        )
        return {"arch": arch, "L": length, "mode": mode, "error": f"{reason} (limit {limit_gib} GiB)"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        arch, length, mode, limit, threads = (
            sys.argv[2],
            int(sys.argv[3]),
            sys.argv[4],
            float(sys.argv[5]),
            int(sys.argv[6]),
        )
        device = sys.argv[7]
        if device == "cpu":  # (CUDA reserves a large virtual address space: no address-space limit there)
            resource.setrlimit(resource.RLIMIT_AS, (int(limit * 2**30), int(limit * 2**30)))
        print(json.dumps(measure(arch, length, mode, threads, device)))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384])
    p.add_argument("--archs", nargs="+", default=["mamba", "transformer", "mambapy"])
    p.add_argument("--json", help="write one record per measurement to this file")
    p.add_argument("--memory-limit-gib", type=float, default=16.0)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--repeats", type=int, default=1, help="runs per measurement; the median is shown")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--modes", nargs="+", default=["train", "step"], choices=["train", "step"])
    args = p.parse_args()
    records = []
    print(
        f"{'arch':12} {'impl':8} {'scan':9} {'L':>6} {'params':>8} {'fwd+bwd s':>10} {'peak MiB':>9} {'step ms':>8} "
        f"{'matmul GFLOP':>12} {'matmul s':>8} {'x matmul':>8}"
    )
    for arch in args.archs:
        for length in args.lengths:
            for mode in [m for m in args.modes if arch != "mambapy" or m == "train"]:
                runs = [
                    run_isolated(arch, length, mode, args.memory_limit_gib, args.timeout, args.threads, args.device)
                    for _ in range(args.repeats)
                ]
                r = runs[0] if any("error" in x for x in runs) else median_record(runs)
                records.append(r)
                if "error" in r:
                    print(f"{arch:12} {'':8} {'':9} {length:6d} {'':8} {mode}: {r['error']}", flush=True)
                    continue
                fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
                # the matmul-bound floor: the model's matmul FLOPs at this process's measured matmul rate
                floor = r["matmul_gflop"] / r["matmul_gflops_rate"] if r.get("matmul_gflop") else None
                print(
                    f"{r['arch']:12} {r['impl']:8} {r['scan']:9} {length:6d} {r['params']:8d} "
                    f"{fmt(r['fwd_bwd_s'], '10.3f'):>10} "
                    f"{fmt(r['peak_mib'], '9.0f'):>9} {fmt(r['step_ms'], '8.3f'):>8} "
                    f"{fmt(r.get('matmul_gflop'), '12.1f'):>12} "
                    f"{fmt(floor, '8.2f'):>8} {fmt(floor and r['fwd_bwd_s'] / floor, '8.1f'):>8}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
