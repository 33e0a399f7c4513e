"""The fused synthesis kernel against a plain copy of the same bytes (GB/s of memory traffic).

GPU (CuPy present and a device visible): the CUDA kernel vs a CuPy device-to-device copy, timed
with CUDA events after warm-up, median of repeats. CPU: the NumPy reference vs ``numpy.copyto``.

    python benchmarks/bench_kernel.py                 # batch 32, T 8, 224x224
    python benchmarks/bench_kernel.py --quick         # small sizes, seconds on a laptop

Writes ``kernel-<tag>.json`` and ``.md`` under ``benchmarks/results`` (or ``--out DIR``). The
full comparison of the pipeline, the baselines and the training step is ``bsp-dali bench``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bsp_dali.bench import bench_kernel, describe_machine  # noqa: E402
from bsp_dali.gpu import cuda_available  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (CI smoke test)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--frames", type=int, default=8, help="clip length T")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--tag", default=None, help="file name tag (default: gpu or cpu)")
    args = ap.parse_args()
    device = ("gpu" if cuda_available() else "cpu") if args.device == "auto" else args.device
    batch = args.batch or (4 if args.quick else 32)
    size = args.size or (32 if args.quick else 224)
    row = bench_kernel(device, batch, args.frames, size, args.repeats or (3 if args.quick else 20))
    if not (row["GBps"] > 0 and row["copy_GBps"] > 0):
        raise SystemExit(f"insane result: {row}")
    settings = {"batch": batch, "T": args.frames, "H": size, "W": size, "C": 3, "dtype": "float16",
                "layout": "NCTHW", "statistic": "median", "device": device}
    result = {"benchmark": "kernel-vs-copy", "machine": describe_machine(), "settings": settings, "rows": [row],
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or device + ("-quick" if args.quick else "")
    (args.out / f"kernel-{tag}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Kernel vs copy ({device})", "", f"Machine: {json.dumps(result['machine'])}", "",
             f"Settings: {json.dumps(settings)}", "",
             "| backend | ms | GB/s | copy GB/s | fraction of copy |", "|---|---|---|---|---|",
             f"| {row['decoder']} | {row['seconds'] * 1e3:.3f} | {row['GBps']:.2f} | {row['copy_GBps']:.2f} | "
             f"{row['fraction_of_copy']:.3f} |"]
    if "iterator_path_seconds" in row:
        lines += ["", f"The iterator's path (PyTorch output, tables in one pinned copy): "
                      f"{row['iterator_path_seconds'] * 1e3:.3f} ms"]
    (args.out / f"kernel-{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
