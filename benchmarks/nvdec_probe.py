#!/usr/bin/env python3
"""The decode tables of ../shared/GPU-FINDINGS.md in one command, in under 3 minutes.

    python benchmarks/nvdec_probe.py --out benchmarks/results --tag h100      # on a GPU machine
    python benchmarks/nvdec_probe.py --dry-run --out /tmp/probe                # anywhere: CPU stand-ins

Each row decodes random windows of ``--length`` frames (a "clip": 8 by default, as in the
findings) of generated Kinetics-like H.264 (16 videos, 340x256, 250 frames, 3 B-frames; once with
a keyframe every 250 frames, once every 16) and reports windows/s, decoded frames/s, the build
time of file-list pipelines, and NVDEC utilization sampled through NVML (``pynvml``) during the
row (windows and frames counted from what the readers returned; a row that got fewer windows
than it asked for says so in its ``error``):

* ``decoders.video``: ``fn.decoders.video(device="mixed")`` per source (the previous GPU path),
  1 and 7 pipelines on threads;
* ``readers.video``: DALI's legacy reader on file lists of the windows (bsp_dali's
  ``DaliFileListReader``), 1, 4 and 7 pipelines on threads, 7 in processes; GOP 250 and 16;
* ``experimental.readers.video`` (GPU), 1 and 7 pipelines on threads;
* reference points where installed: PyNvVideoCodec's ``SimpleDecoder`` (one per thread,
  ``reconfigure_decoder`` between files) and torchcodec's CUDA decoder; PyAV on the CPU threads.

Rows stop at their time budget; a row that fails records its error and the probe goes on. JSON and
Markdown land in ``--out`` as ``nvdec-probe-<tag>.{json,md}``. ``--dry-run`` runs the same code on
the CPU (DALI's CPU reader on VP9, PyAV) with tiny data: it proves the script works, not a speed.

UNVERIFIED: written in a session without a GPU; only ``--help`` and ``--dry-run`` have run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bsp_dali.data.index import DatasetIndex  # noqa: E402
from bsp_dali.decode.windows import DecodeUnit  # noqa: E402
from bsp_dali.measure import UtilSampler, nvml_sampler  # noqa: E402
from bsp_dali.plan.augment import FULL_BOX  # noqa: E402


# ---------------------------------------------------------------------------------- data
def make_data(root: Path, gop: int, codec: str = "h264", videos: int = 16, frames: int = 250,
              size: tuple[int, int] = (256, 340)) -> DatasetIndex:
    """Generated videos (cached under ``root``), indexed."""
    from bsp_dali.data.demo import DEMO_CLASSES, render_frame
    from bsp_dali.data.ingest import MANIFEST_NAME, index_data, load_data
    from bsp_dali.data.videogen import write_video

    base = root / f"{codec}-gop{gop}-{videos}x{frames}-{size[1]}x{size[0]}"
    if (base / MANIFEST_NAME).is_file():
        return load_data(base)
    ext = "webm" if codec == "vp9" else "mp4"
    for k in range(videos):
        c = k % 4
        path = base / "train" / DEMO_CLASSES[c] / f"probe{k:03d}_000000_000010.{ext}"
        if not path.exists():
            write_video(path, (render_frame(c, k, i, size[0], size[1]) for i in range(frames)), codec=codec,
                        gop=gop, bframes=3, crf=23)
    index_data(base, min_frames=8, workers=min(8, os.cpu_count() or 1))
    return load_data(base)


def random_windows(index: DatasetIndex, n: int, length: int, seed: int = 0) -> list[DecodeUnit]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        v = int(rng.integers(len(index)))
        start = int(rng.integers(int(index.num_frames[v]) - length + 1))
        out.append(DecodeUnit(v, start, length, FULL_BOX, False))
    return out


# ---------------------------------------------------------------------------------- measuring
def util_sampler(device_id: int = 0) -> UtilSampler:
    """NVDEC (and GPU-busy) utilization every 100 ms through NVML while a row runs, with
    ``bsp_dali.measure``'s sampler; it samples nothing where NVML is missing (the dry run)."""
    return UtilSampler(nvml_sampler(device_id) or dict, interval=0.1)


def util_columns(util: UtilSampler) -> dict[str, Any]:
    """A row's utilization columns (None without samples); a sampling error stays apart from the row's."""
    s = util.summary()
    return {"nvdec_util_mean": s.get("nvdec_mean"), "nvdec_util_max": s.get("nvdec_max"),
            "gpu_util_mean": s.get("gpu_mean"), "util_error": s.get("error")}


def split(units: Sequence[DecodeUnit], parts: int) -> list[list[DecodeUnit]]:
    return [list(units[i::parts]) for i in range(parts)]


def returned(outputs: Sequence[Any], length: int) -> tuple[int, int]:
    """(windows, frames) that a reader really returned: windows are the outputs that are stacks of
    ``length`` frames (a reader's failures, e.g. ``BadVideo``, and short stacks are not); frames are
    counted along the first axis of every stack."""
    frames = [int(o.shape[0]) for o in outputs if len(getattr(o, "shape", ())) >= 1]
    return sum(f == length for f in frames), sum(frames)


def rates(requested: int, got_windows: int, got_frames: int, wall: float, errors: Sequence[str]) -> dict:
    """A row's rates from what came back, not from what was asked for; a row that got fewer
    windows than it asked for says so in ``error``."""
    error = errors[0] if errors else None
    if error is None and got_windows != requested:
        error = f"the readers returned {got_windows} of {requested} windows"
    return {"windows": requested, "returned_windows": got_windows, "returned_frames": got_frames, "seconds": wall,
            "windows_per_s": got_windows / wall, "frames_per_s": got_frames / wall, "error": error}


def timed_threads(work: Callable[[list[DecodeUnit]], tuple[int, int]], chunks: list[list[DecodeUnit]],
                  device_id: int) -> dict:
    """Run ``work`` on each chunk in its own thread, all at once; ``work`` returns the (windows,
    frames) it got back. Windows/s and frames/s over the wall time."""
    errors: list[str] = []
    got: list[tuple[int, int]] = []

    def run(chunk: list[DecodeUnit]) -> None:
        try:
            got.append(work(chunk))
        except Exception as e:  # noqa: BLE001 - a failing row is recorded, not fatal
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    with util_sampler(device_id) as util:
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    requested = sum(len(c) for c in chunks)
    return {**rates(requested, sum(w for w, _ in got), sum(f for _, f in got), wall, errors), **util_columns(util)}


def _sync_gpu(device: str) -> None:
    if device == "gpu":
        import cupy as cp

        cp.cuda.Device().synchronize()


def row_file_list(index: DatasetIndex, units: list[DecodeUnit], kind: str, device: str, pipelines: int,
                  size: tuple[int, int], device_id: int) -> dict:
    from bsp_dali.decode.dali_readers import DaliFileListReader

    builds: list[float] = []

    def work(chunk: list[DecodeUnit]) -> tuple[int, int]:
        reader = DaliFileListReader(index, kind, device, chunk[0].length, size, num_threads=2, device_id=device_id)
        orig = reader._build

        def build(*a: Any) -> Any:  # the build time of the chunk's pipeline, with its file opening
            t = time.perf_counter()
            p = orig(*a)
            builds.append(time.perf_counter() - t)
            return p

        reader._build = build  # type: ignore[method-assign]
        out = reader.read_windows(chunk)
        bad = [r for r in out if not hasattr(r, "shape")]
        if bad:
            raise RuntimeError(f"{len(bad)} windows failed: {bad[0]}")
        _sync_gpu(device)
        return returned(out, chunk[0].length)

    res = timed_threads(work, split(units, pipelines), device_id)
    per_pipe = len(units) / pipelines
    return {**res, "build_seconds_mean": float(np.mean(builds)) if builds else None,
            "build_seconds_per_row": float(np.mean(builds)) / per_pipe if builds else None}


def row_decoders_video(index: DatasetIndex, units: list[DecodeUnit], device: str, pipelines: int,
                       size: tuple[int, int], device_id: int) -> dict:
    from bsp_dali.decode.dali_readers import DaliFramesReader

    def work(chunk: list[DecodeUnit]) -> tuple[int, int]:
        reader = DaliFramesReader(index, device, size, num_threads=2, device_id=device_id, max_sources=32)
        out = []
        for i in range(0, len(chunk), 32):
            out += reader.read_windows(chunk[i:i + 32])
        _sync_gpu(device)
        return returned(out, chunk[0].length)

    return timed_threads(work, split(units, pipelines), device_id)


def _process_worker(manifest: str, units: list[tuple[int, int, int]], kind: str, device: str,
                    size: tuple[int, int], device_id: int, start: Any, done: Any) -> None:
    from bsp_dali.data.ingest import load_data
    from bsp_dali.decode.dali_readers import DaliFileListReader

    index = load_data(manifest)
    chunk = [DecodeUnit(v, s, n, FULL_BOX, False) for v, s, n in units]
    reader = DaliFileListReader(index, kind, device, chunk[0].length, size, num_threads=2, device_id=device_id)
    start.wait()
    out = reader.read_windows(chunk)
    _sync_gpu(device)
    done.put((time.perf_counter(), *returned(out, chunk[0].length)))


def row_processes(manifest: str, units: list[DecodeUnit], kind: str, device: str, pipelines: int,
                  size: tuple[int, int], device_id: int) -> dict:
    """One file-list pipeline per process (spawned: no CUDA state is forked)."""
    ctx = mp.get_context("spawn")
    start, done = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(manifest, [(u.video, u.start, u.length) for u in c], kind,
                                                       device, size, device_id, start, done))
             for c in split(units, pipelines)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # let the processes import DALI before the clock starts (builds are timed)
    with util_sampler(device_id) as util:
        t0 = time.perf_counter()
        start.set()
        ends = []
        for _ in procs:
            try:
                ends.append(done.get(timeout=120))
            except Exception:  # noqa: BLE001
                break
        wall = (max(t for t, _, _ in ends) if ends else time.perf_counter()) - t0
    for p in procs:
        p.join(timeout=30)
    errors = [] if len(ends) == len(procs) else [f"{len(procs) - len(ends)} processes failed"]
    return {**rates(len(units), sum(w for _, w, _ in ends), sum(f for _, _, f in ends), wall, errors),
            **util_columns(util)}


def row_pynvc(index: DatasetIndex, units: list[DecodeUnit], threads: int, device_id: int) -> dict:
    import PyNvVideoCodec as nvc  # noqa: N813

    def work(chunk: list[DecodeUnit]) -> tuple[int, int]:
        dec = None
        out = []
        for u in chunk:
            path = os.path.abspath(index.resolve(index.videos[u.video].path))
            if dec is None:
                dec = nvc.SimpleDecoder(path, gpu_id=device_id, use_device_memory=True,
                                        output_color_type=nvc.OutputColorType.RGB)
            else:
                dec.reconfigure_decoder(path)
            out.append(len(dec.get_batch_frames_by_index(list(u.frames))))
        return sum(n == chunk[0].length for n in out), sum(out)

    return timed_threads(work, split(units, threads), device_id)


def row_torchcodec(index: DatasetIndex, units: list[DecodeUnit], threads: int, device_id: int) -> dict:
    from torchcodec.decoders import VideoDecoder

    def work(chunk: list[DecodeUnit]) -> tuple[int, int]:
        out = []
        for u in chunk:
            path = os.path.abspath(index.resolve(index.videos[u.video].path))
            dec = VideoDecoder(path, device=f"cuda:{device_id}", seek_mode="approximate")
            out.append(dec.get_frames_at(list(u.frames)).data)
        return returned(out, chunk[0].length)

    return timed_threads(work, split(units, threads), device_id)


def row_pyav(index: DatasetIndex, units: list[DecodeUnit], threads: int) -> dict:
    from bsp_dali.decode.pyav import PyAVReader

    reader = PyAVReader(index)

    def work(chunk: list[DecodeUnit]) -> tuple[int, int]:
        return returned([reader.read(index.videos[u.video], u.frames) for u in chunk], chunk[0].length)

    return timed_threads(work, split(units, threads), 0)


# ---------------------------------------------------------------------------------- the run
def plan_rows(dry: bool, gpu_threads: Sequence[int]) -> list[dict[str, Any]]:
    """(row, reader, device, pipelines, mode, gop, windows) of every row, in run order."""
    if dry:
        return [
            {"reader": "experimental.readers.video", "device": "cpu", "pipelines": 1, "mode": "threads", "gop": 250, "windows": 12},
            {"reader": "experimental.readers.video", "device": "cpu", "pipelines": 2, "mode": "threads", "gop": 250, "windows": 12},
            {"reader": "experimental.readers.video", "device": "cpu", "pipelines": 2, "mode": "threads", "gop": 16, "windows": 12},
            {"reader": "experimental.readers.video", "device": "cpu", "pipelines": 2, "mode": "processes", "gop": 250, "windows": 12},
            {"reader": "decoders.video", "device": "cpu", "pipelines": 1, "mode": "threads", "gop": 250, "windows": 12},
            {"reader": "pyav", "device": "cpu", "pipelines": 2, "mode": "threads", "gop": 250, "windows": 12},
        ]
    # decoders.video: ~12 sources/s whatever the pipelines (GPU-FINDINGS), so few windows
    rows = [{"reader": "decoders.video", "device": "gpu", "pipelines": p, "mode": "threads", "gop": g,
             "windows": 32 if p == 1 else 16 * p} for g, p in ((250, 1), (250, 7), (16, 7))]
    rows += [{"reader": "readers.video", "device": "gpu", "pipelines": p, "mode": "threads", "gop": 250, "windows": 96 * p}
             for p in gpu_threads]
    rows += [{"reader": "readers.video", "device": "gpu", "pipelines": 7, "mode": "threads", "gop": 16, "windows": 7 * 160},
             {"reader": "readers.video", "device": "gpu", "pipelines": 7, "mode": "processes", "gop": 250, "windows": 7 * 96}]
    rows += [{"reader": "experimental.readers.video", "device": "gpu", "pipelines": p, "mode": "threads", "gop": 250,
              "windows": 48 * p} for p in (1, 7)]
    rows += [{"reader": "pynvvideocodec", "device": "gpu", "pipelines": p, "mode": "threads", "gop": g, "windows": 96 * p}
             for g in (250, 16) for p in (1, 7)]
    rows += [{"reader": "torchcodec", "device": "gpu", "pipelines": 1, "mode": "threads", "gop": 250, "windows": 48},
             {"reader": "pyav", "device": "cpu", "pipelines": os.cpu_count() or 1, "mode": "threads", "gop": 250,
              "windows": 16 * (os.cpu_count() or 1)}]
    return rows


def run_row(spec: dict[str, Any], data: dict[int, tuple[DatasetIndex, str]], length: int, size: tuple[int, int],
            device_id: int) -> dict[str, Any]:
    index, manifest = data[spec["gop"]]
    units = random_windows(index, spec["windows"], length, seed=spec["windows"] + spec["gop"])
    kind = {"readers.video": "legacy", "experimental.readers.video": "experimental"}.get(spec["reader"])
    p, dev = spec["pipelines"], spec["device"]
    if spec["mode"] == "processes":
        return row_processes(manifest, units, kind or "legacy", dev, p, size, device_id)
    if kind:
        return row_file_list(index, units, kind, dev, p, size, device_id)
    if spec["reader"] == "decoders.video":
        return row_decoders_video(index, units, dev, p, size, device_id)
    if spec["reader"] == "pynvvideocodec":
        return row_pynvc(index, units, p, device_id)
    if spec["reader"] == "torchcodec":
        return row_torchcodec(index, units, p, device_id)
    return row_pyav(index, units, p)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# NVDEC probe ({result['tag']})", "",
             f"Machine: {m.get('gpu') or 'no GPU'}, {m.get('cpu_cores')} cores, DALI {m.get('dali')}; "
             f"windows of {result['length']} frames resized to {result['size'][0]}x{result['size'][1]}; "
             f"NVDEC engines {result['nvdec_engines']}." + (" DRY RUN on the CPU: no speed is claimed." if result["dry_run"] else ""),
             "", "| reader | device | pipelines | mode | GOP | windows returned/asked | windows/s | frames/s | build s/row | NVDEC % mean/max | error |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        def f(x: Any, fmt: str = "{:.1f}") -> str:
            return "-" if x is None else fmt.format(x)
        lines.append(f"| {r['reader']} | {r['device']} | {r['pipelines']} | {r['mode']} | {r['gop']} | {r.get('returned_windows', '-')}/{r.get('windows', '-')} | "
                     f"{f(r.get('windows_per_s'))} | {f(r.get('frames_per_s'), '{:.0f}')} | "
                     f"{f(r.get('build_seconds_per_row'), '{:.4f}')} | {f(r.get('nvdec_util_mean'))}/{f(r.get('nvdec_util_max'))} | "
                     f"{r.get('error') or ''} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Decode throughput of DALI's video operators, 1/4/7 pipelines, threads "
                                             "against processes, GOP 250 against 16, with NVDEC utilization.")
    ap.add_argument("--out", default="benchmarks/results", help="folder for nvdec-probe-<tag>.json/.md")
    ap.add_argument("--tag", default=None, help="name of the result files (default: gpu, or cpu-dry-run)")
    ap.add_argument("--data", default=None, help="where the generated videos are cached (default: $BSP_DALI_CACHE "
                                                 "or ~/.cache/bsp-dali/nvdec-probe)")
    ap.add_argument("--length", type=int, default=8, help="frames per window (a clip)")
    ap.add_argument("--size", type=int, default=224, help="output side (windows are resized to size x size)")
    ap.add_argument("--budget", type=float, default=150.0, help="seconds after which remaining rows are skipped")
    ap.add_argument("--device-id", type=int, default=0)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4, 7], help="legacy-reader pipelines on threads")
    ap.add_argument("--dry-run", action="store_true", help="run the code on the CPU with tiny VP9 data (no GPU)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    from bsp_dali.decode.nvdec import nvdec_engines

    dry = bool(args.dry_run)
    tag = args.tag or ("cpu-dry-run" if dry else "gpu")
    cache = Path(args.data or os.environ.get("BSP_DALI_CACHE", Path.home() / ".cache" / "bsp-dali")) / "nvdec-probe"
    size = (args.size, args.size) if not dry else (32, 32)
    if dry:
        data = {g: make_data(cache, g, codec="vp9", videos=4, frames=40, size=(64, 96)) for g in (250, 16)}
    else:
        data = {g: make_data(cache, g) for g in (250, 16)}
    with_manifest = {g: (ix, str(Path(ix.root) / "bsp-dali-manifest.json")) for g, ix in data.items()}
    try:
        sys.path.insert(0, str(ROOT))
        from bsp_dali.bench import describe_machine

        machine = describe_machine()
    except Exception:  # noqa: BLE001 - the bench module may change; the probe still runs
        machine = {"cpu_cores": os.cpu_count()}
    result: dict[str, Any] = {"tag": tag, "dry_run": dry, "length": args.length, "size": list(size),
                              "nvdec_engines": None if dry else nvdec_engines(args.device_id), "machine": machine,
                              "rows": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every row: a probe killed at its time limit keeps what it measured
        result["seconds"] = time.perf_counter() - t_start
        (out / f"nvdec-probe-{tag}.json").write_text(json.dumps(result, indent=1))
        (out / f"nvdec-probe-{tag}.md").write_text(markdown(result))

    for spec in plan_rows(dry, args.threads):
        if time.perf_counter() - t_start > args.budget:
            result["rows"].append({**spec, "error": "skipped: time budget spent"})
            continue
        print(f"{spec['reader']:28s} {spec['device']} x{spec['pipelines']} {spec['mode']:9s} GOP {spec['gop']}", flush=True)
        try:
            res = run_row(spec, with_manifest, args.length, size, args.device_id)
        except Exception as e:  # noqa: BLE001 - missing packages and failures are recorded
            res = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
        result["rows"].append({**spec, **res})
        print("   ", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}, flush=True)
        write()
    write()
    print(f"wrote {out / f'nvdec-probe-{tag}.md'} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
