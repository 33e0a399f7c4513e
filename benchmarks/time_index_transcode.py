"""Time `bsp-dali index`'s two probes and `bsp-dali transcode` on the bench's data.

The figures quoted in docs/transcode.md and the README come from this script's JSON. It uses the
bench's generated videos (16 files x 250 frames, 340x256, textured H.264 with B-frames; generated
once into the bench's cache) and times, each ``--repeats`` times (best kept):

- ``build_index`` with ``--probe packets`` and ``--probe decode`` on 1 and on all cores (no command
  start-up; nothing reused from an earlier manifest);
- ``bsp-dali transcode --gop 16 --keep-size --workers N`` as a command, start-up included, into a
  fresh folder each time.

Run on a quiet machine, from the repository root::

    .venv/bin/python benchmarks/time_index_transcode.py --out benchmarks/results/index-transcode-cpu-2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsp_dali.bench.data import BenchDataSpec, bench_data  # noqa: E402
from bsp_dali.bench.machine import describe_machine  # noqa: E402
from bsp_dali.data.ingest import build_index, discover  # noqa: E402


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cores = os.cpu_count() or 1

    index = bench_data(BenchDataSpec())
    root = Path(index.root)
    entries = discover(root)
    files, frames = len(index.videos), sum(v.num_frames for v in index.videos)
    rows = []
    for probe in ("packets", "decode"):
        for workers in sorted({1, cores}):
            s = best_of(args.repeats, lambda: build_index(root, entries, min_frames=8, probe=probe, workers=workers))
            rows.append({"what": f"index --probe {probe}", "workers": workers, "seconds": round(s, 3),
                         "files_per_s": round(files / s, 1), "frames_per_s": round(frames / s)})
            print(f"index --probe {probe:7s} {workers} process(es): {s:.2f} s ({files / s:.0f} files/s)")
    with tempfile.TemporaryDirectory() as tmp:
        k = iter(range(10**6))
        cmd = [sys.executable, "-m", "bsp_dali", "transcode", str(root), "", "--gop", "16", "--keep-size",
               "--workers", str(cores)]

        def transcode() -> None:
            cmd[5] = str(Path(tmp) / f"out{next(k)}")
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)

        s = best_of(args.repeats, transcode)
        rows.append({"what": "transcode --gop 16 --keep-size", "workers": cores, "seconds": round(s, 3),
                     "files_per_s": round(files / s, 2), "frames_per_s": round(frames / s)})
        print(f"transcode --gop 16 --keep-size --workers {cores}: {s:.2f} s ({frames / s:.0f} frames/s)")
    out = {"what": "index probes and transcode on the bench data", "machine": describe_machine(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "data": {"files": files, "frames": frames, "folder": str(root)}, "repeats": args.repeats, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
