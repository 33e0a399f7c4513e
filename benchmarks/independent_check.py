"""An independent check of the bench's CPU figures: the same two loaders, timed by a plain loop.

`bsp-dali bench` times every row with ``bsp_dali.measure.steady_rate``. A figure that decides which
loader users pick should not rest on one timing routine, so this script measures the CPU pipeline
(``BSPIterator``) and the PyAV DataLoader baseline again with nothing but ``time.perf_counter``
around ``next()``: ``--warmup`` batches untimed, then ``--batches`` timed, for each loader in turn,
on the bench's GOP-250 data and on its GOP-16 transcode (both from the bench's cache, generated if
missing). It also reads ``/proc/stat`` over each timed loop, to show whether the cores were busy.

Run on a quiet machine, from the repository root::

    .venv/bin/python benchmarks/independent_check.py --out benchmarks/results/independent-check-cpu-2core.json

Settings follow the recorded bench's first grid point: T 8, 112x112, float16, batch 8, tau 4,
worker processes = DataLoader workers = all cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bsp_dali.bench.data import BenchDataSpec, bench_data, transcoded_data  # noqa: E402
from bsp_dali.bench.machine import describe_machine  # noqa: E402
from bsp_dali.plan.augment import SpatialConfig  # noqa: E402
from bsp_dali.plan.config import SynthesisConfig  # noqa: E402


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies over all cores, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def time_loop(batches, warmup: int, timed: int, batch: int) -> dict:
    for _ in range(warmup):
        next(batches)
    b0, t0 = cpu_busy()
    start = time.perf_counter()
    for _ in range(timed):
        next(batches)
    seconds = time.perf_counter() - start
    b1, t1 = cpu_busy()
    return {"clips_per_s": round(timed * batch / seconds, 2), "seconds": round(seconds, 2), "batches": timed,
            "cpu_busy_fraction": round((b1 - b0) / max(t1 - t0, 1), 4)}


def pipeline_rate(index, args) -> dict:
    from bsp_dali.iterator import BSPIterator

    it = BSPIterator(index, args.batch, synthesis=SynthesisConfig(tau=args.frames // 2),
                     spatial=SpatialConfig(size=(args.size, args.size)), device="cpu", num_threads=args.workers,
                     epoch_size=args.batch * 10**6, dtype="float16", return_recipes=False)
    try:
        gen = (it.to_torch(raw) for raw in it.iter_raw())
        return time_loop(gen, args.warmup, args.batches, args.batch)
    finally:
        it.close()


def dataloader_rate(index, args) -> dict:
    import torch

    from bsp_dali.bench.rows import _BaselineDataset

    ds = _BaselineDataset(index, SynthesisConfig(tau=args.frames // 2), args.size, "pyav")
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, num_workers=args.workers, prefetch_factor=2,
                                         persistent_workers=True)
    # the DataLoader holds workers x prefetch batches ahead: the warm-up drains them as well
    return time_loop(iter(loader), args.warmup + 2 * args.workers, args.baseline_batches, args.batch)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--warmup", type=int, default=12)
    ap.add_argument("--batches", type=int, default=150, help="timed pipeline batches")
    ap.add_argument("--baseline-batches", type=int, default=60, help="timed DataLoader batches")
    ap.add_argument("--gop", type=int, default=16, help="the transcoded copy's keyframe interval")
    args = ap.parse_args()

    gop250 = bench_data(BenchDataSpec())
    data = {"gop250": gop250, f"gop{args.gop}": transcoded_data(gop250, args.gop)}
    rows = []
    for name, index in data.items():
        pipe = pipeline_rate(index, args)
        base = dataloader_rate(index, args)
        rows.append({"data": name, "pipeline": pipe, "pyav_dataloader": base,
                     "ratio": round(pipe["clips_per_s"] / base["clips_per_s"], 3)})
        print(f"{name}: pipeline {pipe['clips_per_s']:.1f} clips/s (cores {100 * pipe['cpu_busy_fraction']:.1f} % busy),"
              f" PyAV DataLoader {base['clips_per_s']:.1f}, ratio {rows[-1]['ratio']:.2f}")
    out = {"what": "CPU pipeline vs PyAV DataLoader, timed by a plain perf_counter loop (not bsp_dali.measure)",
           "machine": describe_machine(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
