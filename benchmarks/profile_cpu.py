"""Where the CPU time of the CPU data path goes: CPU seconds per delivered clip, by process and
thread, against the PyAV DataLoader baseline, on the same data, plans and cores.

Wall-clock rates on a busy machine say little; CPU seconds per clip (this process, the decode
workers, the DataLoader workers, all counted from /proc) and decoded frames per clip do not depend
on what else runs. Linux only (/proc).

    python benchmarks/profile_cpu.py DATA [--batch 8] [--frames 8] [--size 224] [--workers 2]
        [--batches 30] [--warmup 6] [--rows baseline pipeline pipeline-plain threads share2 share4]
        [--out profile.json]

DATA is a folder indexed with ``bsp-dali index`` (e.g. the bench's generated data, or its
``bsp-dali transcode`` output). Rows:

* ``baseline``: a PyTorch DataLoader with ``--workers`` workers, one synthesized sample per item
  (PyAV from the keyframe through the last planned frame, FFmpeg's threads; Pillow; the NumPy
  reference in float32), converted to float16 in the main process: the bench's baseline;
* ``pipeline``: ``BSPIterator`` on the CPU as shipped (``--workers`` decode processes, unreferenced
  frames skipped before each window, synthesis thread), float16 batches as PyTorch tensors;
* ``pipeline-plain``: the same without skipping unreferenced frames;
* ``threads``: the same with ``cpu_workers="threads"`` (decode threads in this process);
* ``shareK``: the pipeline with ``share=K`` (K samples decode one window; see docs/method.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bsp_dali import SynthesisConfig  # noqa: E402
from bsp_dali.data.index import DatasetIndex  # noqa: E402
from bsp_dali.plan.augment import SpatialConfig, apply_cpu  # noqa: E402
from bsp_dali.synth.synthesis import synthesize_reference  # noqa: E402
from bsp_dali.synth.tables import OutDType, RecipeTables  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _stat_cpu(path: str) -> float:
    """utime + stime of a /proc stat file, in seconds (0 if it is gone)."""
    try:
        with open(path) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.append(int(name))
    return out


def process_tree_cpu() -> dict[int, float]:
    """CPU seconds of this process and of every descendant, by pid."""
    me = os.getpid()
    seen, todo = {}, [me]
    while todo:
        pid = todo.pop()
        seen[pid] = _stat_cpu(f"/proc/{pid}/stat")
        todo.extend(_children(pid))
    return seen


def thread_cpu(native_id: int | None) -> float:
    return _stat_cpu(f"/proc/self/task/{native_id}/stat") if native_id else 0.0


def decode_cost(index: DatasetIndex, plans: list[Any]) -> int:
    """Frames a plain seeking decoder decodes for the plans (keyframe through last frame, per source)."""
    return sum(index.videos[s.video].frames_to_decode(min(f), max(f))
               for p in plans for s, f in zip(p.sources, p.frames))


class BaselineDataset:
    """The bench's baseline: one synthesized sample per item, as a user would write it."""

    def __init__(self, index: DatasetIndex, synthesis: SynthesisConfig, size: int):
        self.index, self.synthesis, self.size = index, synthesis, size
        self._planner = None
        self._reader = None

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch

        from bsp_dali.decode.pyav import PyAVReader
        from bsp_dali.plan.planner import Planner

        if self._planner is None:
            self._planner = Planner(self.index, self.synthesis, seed=0,
                                    spatial=SpatialConfig(size=(self.size, self.size)))
            self._reader = PyAVReader(self.index)
        plan = self._planner.plan(i, 0)
        size = (self.size, self.size)
        stacks = [apply_cpu(self._reader.read(self.index.videos[s.video], f), plan.crop, plan.flip, size)
                  for s, f in zip(plan.sources, plan.frames)]
        video = synthesize_reference(stacks, RecipeTables.from_plans([plan]), dtype=OutDType.FLOAT32)[0]
        return torch.from_numpy(video), i


def measure(batches: Iterator[Any], warmup: int, count: int, probe: Callable[[], dict[str, float]],
            on_batch: Callable[[Any], dict[str, float]]) -> dict[str, Any]:
    for _ in range(warmup):
        on_batch(next(batches))
    p0, c0, t0 = probe(), process_tree_cpu(), time.perf_counter()
    totals: dict[str, float] = {}
    for _ in range(count):
        for k, v in on_batch(next(batches)).items():
            totals[k] = totals.get(k, 0.0) + v
    wall = time.perf_counter() - t0
    c1, p1 = process_tree_cpu(), probe()
    me = os.getpid()
    cpu_main = c1.get(me, 0.0) - c0.get(me, 0.0)
    cpu_children = sum(v - c0.get(pid, 0.0) for pid, v in c1.items() if pid != me)
    clips = totals["clips"]
    row = {"clips": clips, "wall_s": wall, "clips_per_s_noisy": clips / wall,
           "cpu_s_per_clip": (cpu_main + cpu_children) / clips,
           "main_process_cpu_s_per_clip": cpu_main / clips, "child_processes_cpu_s_per_clip": cpu_children / clips,
           "decoded_frames_per_clip": totals["decoded"] / clips}
    for k in p1:
        row[f"{k}_per_clip"] = (p1[k] - p0.get(k, 0.0)) / clips
    return row


def run_baseline(index: DatasetIndex, args: argparse.Namespace, syn: SynthesisConfig) -> dict[str, Any]:
    import torch

    ds = BaselineDataset(index, syn, args.size)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, num_workers=args.workers,
                                         persistent_workers=True, prefetch_factor=2)
    from bsp_dali.plan.planner import Planner

    planner = Planner(index, syn, seed=0, spatial=SpatialConfig(size=(args.size, args.size)))

    def batches():
        for video, idx in loader:
            yield video.half(), [int(i) for i in idx]

    def on_batch(b):
        plans = [planner.plan(i, 0) for i in b[1]]
        return {"clips": len(plans), "decoded": decode_cost(index, plans)}

    try:
        row = measure(batches(), args.warmup, args.batches, dict, on_batch)
    finally:
        del loader
    return {"row": "baseline", **row}


def run_pipeline(index: DatasetIndex, args: argparse.Namespace, syn: SynthesisConfig, name: str,
                 **kw: Any) -> dict[str, Any]:
    from bsp_dali.iterator import BSPIterator

    plain = kw.pop("plain", False)
    it = BSPIterator(index, args.batch, synthesis=syn, spatial=SpatialConfig(size=(args.size, args.size)), device="cpu",
                     decoder="pyav", num_threads=args.workers, epoch_size=args.batch * 10**6, dtype="float16", **kw)
    if plain:
        from bsp_dali.decode.procreader import ProcessWindowReader

        it.stage.cpu_reader.close()
        it.stage.cpu_reader = ProcessWindowReader(index, it.stage.size, args.workers, skip_nonref=False)
    reader = it.stage.cpu_reader
    raw = it.iter_raw()

    def probe() -> dict[str, float]:
        out: dict[str, float] = {}
        w = it._worker
        if w is not None:
            out["thread_prefetch_cpu_s"] = thread_cpu(w.thread.native_id)
            out["thread_synthesis_cpu_s"] = thread_cpu(w.synth.native_id) if w.synth is not None else 0.0
        stats = getattr(reader, "stats", None)
        if stats is not None:
            out["worker_decode_cpu_s"] = stats.decode_s
            out["worker_transform_cpu_s"] = stats.transform_s
            out["units"] = stats.units
            out["window_frames"] = stats.frames
            out["fallbacks"] = stats.fallbacks
        return out

    def frames_decoded() -> int:
        stats = getattr(reader, "stats", None)
        if stats is not None:
            return stats.decoded
        return reader.reader.decoded  # threads: the PyAVReader's counter

    state = {"decoded": frames_decoded()}

    def on_batch(r):
        it.to_torch(r)
        now = frames_decoded()
        d, state["decoded"] = now - state["decoded"], now
        return {"clips": len(r.plans), "decoded": d}

    try:
        row = measure(raw, args.warmup, args.batches, probe, on_batch)
    finally:
        it.close()
    row["decoded_frames_per_clip_note"] = "counted by the decoder (frames it produced), ahead batches included"
    return {"row": name, "decoder": it.decoder_description, **row}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8, help="clip length T (tau = T/2)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--rows", nargs="+", default=["baseline", "pipeline", "pipeline-plain", "threads"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from bsp_dali.data.ingest import load_data

    index = load_data(args.data)
    syn = SynthesisConfig(tau=args.frames // 2)
    rows = []
    for name in args.rows:
        if name == "baseline":
            row = run_baseline(index, args, syn)
        elif name == "pipeline":
            row = run_pipeline(index, args, syn, name)
        elif name == "pipeline-plain":
            row = run_pipeline(index, args, syn, name, plain=True)
        elif name == "threads":
            row = run_pipeline(index, args, syn, name, cpu_workers="threads")
        elif name.startswith("share"):
            row = run_pipeline(index, args, syn, name, share=int(name[5:]))
        else:
            raise SystemExit(f"unknown row {name!r}")
        rows.append(row)
        keys = ("cpu_s_per_clip", "decoded_frames_per_clip", "clips_per_s_noisy")
        print(name, {k: round(row[k], 4) for k in keys}, flush=True)
    base = next((r for r in rows if r["row"] == "baseline"), None)
    if base is not None:
        for r in rows:
            # CPU time is counted in clock ticks (10 ms): a run too short to register gives no ratio
            cpu = r["cpu_s_per_clip"]
            r["cpu_per_clip_vs_baseline"] = base["cpu_s_per_clip"] / cpu if cpu else None
    result = {"settings": vars(args), "rows": rows, "cores": len(os.sched_getaffinity(0))}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
