"""The fused synthesis kernel against a plain copy of the same bytes.

GPU (CuPy present and a device visible): the CUDA kernel vs ``cupy`` device-to-device copy, in GB/s
of memory traffic (bytes read + bytes written), timed with CUDA events after warm-up, median of
repeats. CPU: the NumPy reference (and the host build of the kernel source, a test tool, not a fast
path) vs ``numpy.copyto`` of the same traffic.

    python benchmarks/bench_kernel.py                 # full sizes (224x224, batch 32)
    python benchmarks/bench_kernel.py --quick         # small sizes, seconds on a laptop

Writes ``benchmarks/results/kernel-<machine>.json`` and ``.md`` (or ``--out DIR``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bsp_dali import DatasetIndex, Planner, RecipeTables, SynthesisConfig  # noqa: E402
from bsp_dali.synthesis import OutDType, synthesize_reference  # noqa: E402
from machine import describe  # noqa: E402


def make_batch(n: int, tau: int, H: int, W: int, seed: int = 0):
    index = DatasetIndex.from_lists([f"v{i}.mp4" for i in range(64)], [f"c{i % 8}" for i in range(64)],
                                    [300] * 64)
    plans = Planner(index, SynthesisConfig(tau=tau), seed=seed).plan_many(range(n))
    rng = np.random.default_rng(seed)
    sources = [rng.integers(0, 256, (len(fr), H, W, 3), dtype=np.uint8) for p in plans for fr in p.frames]
    return sources, RecipeTables.from_plans(plans)


def traffic_bytes(sources, tables, dtype: OutDType) -> int:
    """Bytes the kernel must move: each used input pixel once per term, each output element once."""
    H, W, C = sources[0].shape[1:]
    terms = int((tables.src >= 0).sum())
    out = tables.N * tables.T * H * W * C * dtype.storage.itemsize
    return terms * H * W * C + out


def time_it(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()  # warm-up (and compilation) outside the timed region
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_gpu(sources, tables, dtype, repeats):
    import cupy as cp

    from bsp_dali.kernel_cupy import synthesize_cupy

    dev = [cp.asarray(s) for s in sources]
    nbytes = traffic_bytes(sources, tables, dtype)
    a = cp.empty(nbytes // 2, dtype=cp.uint8)
    b = cp.empty_like(a)
    out = None

    def kernel():
        nonlocal out
        out = synthesize_cupy(dev, tables, dtype=dtype, out=out)

    def events(fn):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        fn()
        cp.cuda.runtime.deviceSynchronize()
        ts = []
        for _ in range(repeats):
            start.record()
            fn()
            end.record()
            end.synchronize()
            ts.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
        return statistics.median(ts)

    tk = events(kernel)
    tc = events(lambda: cp.copyto(b, a))
    return {"backend": "cupy-kernel", "seconds": tk, "GBps": nbytes / tk / 1e9,
            "copy_seconds": tc, "copy_GBps": 2 * a.nbytes / tc / 1e9, "fraction_of_copy": (nbytes / tk) / (2 * a.nbytes / tc)}


def bench_cpu(sources, tables, dtype, repeats, host_kernel: bool):
    nbytes = traffic_bytes(sources, tables, dtype)
    a = np.empty(nbytes // 2, np.uint8)
    b = np.empty_like(a)
    tc = time_it(lambda: np.copyto(b, a), repeats)
    rows = []
    tr = time_it(lambda: synthesize_reference(sources, tables, dtype=dtype), repeats)
    rows.append({"backend": "numpy-reference", "seconds": tr, "GBps": nbytes / tr / 1e9})
    if host_kernel:
        from bsp_dali.kernel_host import load, synthesize_host

        lib = load()
        th = time_it(lambda: synthesize_host(sources, tables, dtype=dtype, lib=lib), repeats)
        rows.append({"backend": "host-build-of-kernel", "seconds": th, "GBps": nbytes / th / 1e9})
    for r in rows:
        r.update(copy_seconds=tc, copy_GBps=2 * a.nbytes / tc / 1e9, fraction_of_copy=(nbytes / r["seconds"]) / (2 * a.nbytes / tc))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (CI smoke test)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    ap.add_argument("--tau", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--dtype", default="float16", choices=[d.value for d in OutDType])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--tag", default=None, help="file name tag (default: gpu or cpu)")
    args = ap.parse_args()
    n = args.batch or (4 if args.quick else 32)
    H, W = args.size or ((32, 32) if args.quick else (224, 224))
    repeats = args.repeats or (3 if args.quick else 10)
    dtype = OutDType(args.dtype)
    from bsp_dali.gpu import cuda_available

    device = ("gpu" if cuda_available() else "cpu") if args.device == "auto" else args.device
    sources, tables = make_batch(n, args.tau, H, W)
    if device == "gpu":
        rows = [bench_gpu(sources, tables, dtype, repeats)]
    else:
        rows = bench_cpu(sources, tables, dtype, repeats, host_kernel=args.quick)
    settings = {"batch": n, "T": 2 * args.tau, "H": H, "W": W, "C": 3, "dtype": dtype.value,
                "layout": "NCTHW", "repeats": repeats, "statistic": "median", "device": device,
                "traffic_bytes": traffic_bytes(sources, tables, dtype)}
    result = {"benchmark": "kernel-vs-copy", "machine": describe(), "settings": settings, "rows": rows,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for r in rows:
        assert r["seconds"] > 0 and np.isfinite(r["GBps"]) and r["GBps"] > 0, r
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or device + ("-quick" if args.quick else "")
    (args.out / f"kernel-{tag}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Kernel vs copy ({device})", "",
             f"Machine: {json.dumps(result['machine'])}", "", f"Settings: {json.dumps(settings)}", "",
             "| backend | ms | GB/s | copy GB/s | fraction of copy |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['seconds'] * 1e3:.3f} | {r['GBps']:.2f} | {r['copy_GBps']:.2f} | "
                     f"{r['fraction_of_copy']:.3f} |")
    (args.out / f"kernel-{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
