"""``bsp-dali bench``: throughput of the pipeline against what users would otherwise write.

Every row is measured in the same run, on the same generated data, with the same planner, recipes
and output format:

* ``pipeline``: ``BSPIterator`` (GPU: NVDEC + the fused kernel; CPU: PyAV/DALI threads + NumPy);
* ``baseline``: a PyTorch ``DataLoader`` with N worker processes, each decoding with PyAV (or
  decord/torchcodec where installed), transforming with Pillow, synthesizing one sample at a time
  with the NumPy reference, then copied to the GPU;
* ``decode-only``: the same planned frames decoded and resized, no synthesis (DALI on the GPU; the
  CPU path's decode stage on the CPU): the ceiling of the pipeline;
* ``kernel``: the synthesis kernel against a device-to-device copy of the same bytes (GB/s);
* ``train-step``: a TSM training step fed by the pipeline against the same step fed by a batch
  already on the device (the data-stall fraction).

Clips/s counts synthesized clips delivered; frames/s counts planned source frames delivered
(decoded, resized). Timings: warm-up batches first, then everything delivered over the timed batches
divided by their wall time (prefetching loaders deliver in bursts, so per-batch medians would
flatter them), with the device synchronized around each timed region; the kernel row is a median
of CUDA-event (or wall) times of one launch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .augment import SpatialConfig, SpatialMode, apply_cpu
from .gpu import autocast as autocast_for
from .config import SynthesisConfig
from .index import DatasetIndex
from .synthesis import OutDType, RecipeTables, synthesize_reference

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_machine() -> dict[str, Any]:
    """CPU model and cores, GPU, driver and library versions."""
    import numpy

    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "python": platform.python_version(),
                            "numpy": numpy.__version__, "gpu": None}
    for mod, key in (("torch", "torch"), ("av", "pyav"), ("nvidia.dali", "dali"), ("cupy", "cupy")):
        try:
            m = __import__(mod, fromlist=["__version__"])
            info[key] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001
            info[key] = None
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            props = cupy.cuda.runtime.getDeviceProperties(0)
            name = props["name"]
            info["gpu"] = name.decode() if isinstance(name, bytes) else name
            info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
            info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
            try:
                smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=20)
                info["nvidia_driver"] = smi.stdout.strip() or None
            except (OSError, subprocess.SubprocessError):
                pass
    except Exception:  # noqa: BLE001 - no GPU stack: a CPU-only record
        pass
    return info


# ---------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class BenchDataSpec:
    """Kinetics-like H.264: short side 256, 10 s at 25 fps, a keyframe every 250 frames and 3
    B-frames (x264's defaults, which is what re-encoded YouTube clips carry)."""

    videos: int = 16
    classes: int = 4
    height: int = 256
    width: int = 340
    seconds: float = 10.0
    fps: float = 25.0
    gop: int = 250

    @property
    def key(self) -> str:
        return hashlib.sha1(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:10]


QUICK_DATA = BenchDataSpec(videos=6, classes=3, height=96, width=128, seconds=3.0, gop=75)


def bench_data(spec: BenchDataSpec, cache: str | os.PathLike | None = None,
               progress: Callable[[int, int], None] | None = None) -> DatasetIndex:
    """Generate (once, cached by settings) and index the benchmark videos."""
    from .demo import DEMO_CLASSES, render_frame
    from .ingest import MANIFEST_NAME, index_data, load_data
    from .videogen import write_video

    base = Path(cache or os.environ.get("BSP_DALI_CACHE", Path.home() / ".cache" / "bsp-dali")) / f"bench-{spec.key}"
    if (base / MANIFEST_NAME).is_file():
        return load_data(base)
    n = int(round(spec.seconds * spec.fps))
    for k in range(spec.videos):
        c = k % spec.classes
        path = base / "train" / DEMO_CLASSES[c] / f"bench{k:03d}_000000_000010.mp4"
        if not path.exists():
            write_video(path, (render_frame(c, k, i, spec.height, spec.width) for i in range(n)), fps=spec.fps,
                        codec="h264", gop=spec.gop, bframes=3, crf=23)
        if progress:
            progress(k + 1, spec.videos)
    index_data(base, min_frames=8)
    return load_data(base)


# ---------------------------------------------------------------------------------- timing helpers
def _sync(device: str) -> None:
    if device == "gpu":
        import torch

        torch.cuda.synchronize()


def _timed(batches: Iterable[Any], warmup: int, count: int, device: str,
           measure: Callable[[Any], tuple[int, int]]) -> dict[str, float]:
    """Throughput over ``count`` batches after ``warmup``: total delivered / total wall time.

    Not a median of per-batch times: loaders that prefetch (DataLoader workers each building a
    whole batch, the pipeline's prefetch thread) deliver in bursts, and a median would count the
    batches that were already waiting as free. ``measure(batch)`` returns (clips, frames)."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    _sync(device)
    times, clips, frames = [], 0, 0
    t_start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        b = next(it)
        _sync(device)
        times.append(time.perf_counter() - t0)
        c, f = measure(b)
        clips += c
        frames += f
    total = time.perf_counter() - t_start
    return {"seconds_per_batch": total / count, "median_seconds_per_batch": statistics.median(times),
            "clips_per_s": clips / total, "frames_per_s": frames / total}


def _planned_frames(plans: Sequence[Any]) -> int:
    return sum(len(f) for p in plans for f in p.frames)


# ---------------------------------------------------------------------------------- rows
def bench_pipeline(index: DatasetIndex, device: str, batch: int, threads: int, synthesis: SynthesisConfig,
                   size: int, count: int, warmup: int, dtype: str = "float16") -> dict[str, Any]:
    from .iterator import BSPIterator

    it = BSPIterator(index, batch, synthesis=synthesis, spatial=SpatialConfig(size=(size, size)), device=device,
                     num_threads=threads, epoch_size=batch * (count + warmup + 2), dtype=dtype, return_recipes=False)
    try:
        raw = it.iter_raw()
        res = _timed((it.to_torch(r) | {"_plans": r.plans} for r in raw), warmup, count, device,
                     lambda b: (len(b["_plans"]), _planned_frames(b["_plans"])))
    finally:
        it.close()
    return {"row": "pipeline", "decoder": it.decoder_description, **res}


class _BaselineDataset:
    """One synthesized sample per item, the way a user would write it in a DataLoader."""

    def __init__(self, index: DatasetIndex, synthesis: SynthesisConfig, size: int, decoder: str):
        self.index, self.synthesis, self.size, self.decoder = index, synthesis, size, decoder
        self._planner = None
        self._reader = None

    def __len__(self) -> int:
        return 10**6

    def _read(self, video: Any, frames: Sequence[int]) -> np.ndarray:
        if self.decoder == "pyav":
            if self._reader is None:
                from .decode import PyAVReader

                self._reader = PyAVReader(self.index)
            return self._reader.read(video, frames)
        path = self.index.resolve(video.path)
        if self.decoder == "decord":
            import decord

            return decord.VideoReader(path).get_batch(list(frames)).asnumpy()
        from torchcodec.decoders import VideoDecoder

        return VideoDecoder(path).get_frames_at(list(frames)).data.permute(0, 2, 3, 1).numpy()

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        import torch

        from .planner import Planner

        if self._planner is None:
            self._planner = Planner(self.index, self.synthesis, seed=0,
                                    spatial=SpatialConfig(size=(self.size, self.size)))
        plan = self._planner.plan(i, 0)
        stacks = [apply_cpu(self._read(self.index.videos[s.video], f), plan.crop, plan.flip, (self.size, self.size))
                  for s, f in zip(plan.sources, plan.frames)]
        video = synthesize_reference(stacks, RecipeTables.from_plans([plan]), dtype=OutDType.FLOAT32)[0]
        return torch.from_numpy(video), plan.label, _planned_frames([plan])


def bench_baseline(index: DatasetIndex, device: str, batch: int, workers: int, synthesis: SynthesisConfig,
                   size: int, count: int, warmup: int, decoder: str = "pyav") -> dict[str, Any]:
    import torch

    ds = _BaselineDataset(index, synthesis, size, decoder)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, pin_memory=device == "gpu",
                                         persistent_workers=workers > 0, prefetch_factor=2 if workers else None)
    target = torch.device("cuda") if device == "gpu" else torch.device("cpu")

    def batches():
        for video, label, frames in loader:
            yield video.to(target, non_blocking=True).half(), int(frames.sum()), len(label)

    try:
        res = _timed(batches(), warmup, count, device, lambda b: (b[2], b[1]))
    finally:
        del loader
    return {"row": "baseline", "decoder": f"{decoder} in {workers} DataLoader workers", **res}


def bench_decode_only(index: DatasetIndex, device: str, batch: int, threads: int, synthesis: SynthesisConfig,
                      size: int, count: int, warmup: int) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from .decode import decode_cpu, read_bytes, select_reader, source_jobs
    from .planner import Planner

    planner = Planner(index, synthesis, seed=0, spatial=SpatialConfig(size=(size, size)))

    def plans_of(b: int) -> list[Any]:
        return planner.plan_many(range(b * batch, (b + 1) * batch))

    if device == "gpu":
        from .pipeline import DaliDecoder, SourceRequest

        dec = DaliDecoder((size, size), "gpu", 2 * batch, threads)

        def batches():
            b = 0
            while True:
                plans = plans_of(b)
                reqs = [SourceRequest(read_bytes(index, j.video), j.frames, j.crop, j.flip) for j in source_jobs(plans)]
                dec.decode(reqs)
                yield plans
                b += 1

        label = "DALI NVDEC + resize, no synthesis"
    else:
        pool = ThreadPoolExecutor(threads)
        reader = select_reader(index)

        def batches():
            b = 0
            while True:
                plans = plans_of(b)
                decode_cpu(source_jobs(plans), index, reader, (size, size), pool)
                yield plans
                b += 1

        label = f"PyAV + Pillow in {threads} threads, no synthesis"
    try:
        res = _timed(batches(), warmup, count, device, lambda plans: (len(plans), _planned_frames(plans)))
    finally:
        if device != "gpu":
            pool.shutdown()
    return {"row": "decode-only", "decoder": label, **res}


def bench_kernel(device: str, batch: int, T: int, size: int, repeats: int) -> dict[str, Any]:
    """The synthesis kernel (GPU) or the NumPy reference (CPU) against a copy of the same traffic."""
    from .planner import Planner

    index = DatasetIndex.from_lists([f"v{i}.mp4" for i in range(64)], [f"c{i % 8}" for i in range(64)], [300] * 64)
    plans = Planner(index, SynthesisConfig(tau=T // 2), seed=0).plan_many(range(batch))
    rng = np.random.default_rng(0)
    sources = [rng.integers(0, 256, (len(fr), size, size, 3), dtype=np.uint8) for p in plans for fr in p.frames]
    tables = RecipeTables.from_plans(plans)
    dtype = OutDType.FLOAT16
    nbytes = int((tables.src >= 0).sum()) * size * size * 3 + batch * T * size * size * 3 * dtype.storage.itemsize
    if device == "gpu":
        import cupy as cp

        from .kernel_cupy import synthesize_cupy

        dev = [cp.asarray(s) for s in sources]
        a = cp.empty(nbytes // 2, cp.uint8)
        b = cp.empty_like(a)
        out = synthesize_cupy(dev, tables, dtype=dtype)

        def events(fn: Callable[[], Any]) -> float:
            fn()
            cp.cuda.runtime.deviceSynchronize()
            start, end, ts = cp.cuda.Event(), cp.cuda.Event(), []
            for _ in range(repeats):
                start.record()
                fn()
                end.record()
                end.synchronize()
                ts.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
            return statistics.median(ts)

        tk = events(lambda: synthesize_cupy(dev, tables, dtype=dtype, out=out))
        tc = events(lambda: cp.copyto(b, a))
        name = "CUDA kernel (CuPy)"
    else:
        a = np.empty(nbytes // 2, np.uint8)
        b = np.empty_like(a)

        def wall(fn: Callable[[], Any]) -> float:
            fn()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return statistics.median(ts)

        tk = wall(lambda: synthesize_reference(sources, tables, dtype=dtype))
        tc = wall(lambda: np.copyto(b, a))
        name = "NumPy reference"
    return {"row": "kernel", "decoder": name, "traffic_bytes": nbytes, "seconds": tk, "GBps": nbytes / tk / 1e9,
            "copy_GBps": 2 * a.nbytes / tc / 1e9, "fraction_of_copy": (nbytes / tk) / (2 * a.nbytes / tc)}


def bench_train_step(index: DatasetIndex, device: str, arch: str, batch: int, threads: int,
                     synthesis: SynthesisConfig, size: int, steps: int, warmup: int) -> dict[str, Any]:
    """A TSM training step fed by the pipeline vs fed by a batch already on the device."""
    import torch

    from bsp_models import ClipClassifier, create_encoder

    from .iterator import BSPIterator

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    model = ClipClassifier(create_encoder(arch, synthesis.T), synthesis.num_classes).to(dev)
    if device == "gpu":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    autocast = autocast_for(device)

    def step(b: dict[str, Any]) -> None:
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(b["video"])["logits"].float(), b["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    it = BSPIterator(index, batch, synthesis=synthesis, spatial=SpatialConfig(size=(size, size)), device=device,
                     num_threads=threads, epoch_size=batch * (2 * steps + 2 * warmup + 4), dtype="float32")
    try:
        loader = iter(it)
        fixed = next(loader)
        for _ in range(warmup):
            step(fixed)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(fixed)
        _sync(device)
        static = (time.perf_counter() - t0) / steps
        for _ in range(warmup):
            step(next(loader))
        _sync(device)
        wait = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            t1 = time.perf_counter()
            b = next(loader)
            wait += time.perf_counter() - t1
            step(b)
        _sync(device)
        fed = (time.perf_counter() - t0) / steps
    finally:
        it.close()
    return {"row": "train-step", "decoder": f"TSM-{arch}", "static_seconds": static, "fed_seconds": fed,
            "stall_fraction": max(0.0, 1 - static / fed), "data_wait_fraction": wait / (fed * steps),
            "clips_per_s": batch / fed}


def stage_profile(index: DatasetIndex, batch: int, threads: int, synthesis: SynthesisConfig, size: int,
                  batches: int = 3) -> dict[str, float]:
    """Seconds per batch of each CPU stage, run one after the other: where the time goes."""
    from concurrent.futures import ThreadPoolExecutor

    from .decode import decode_cpu, select_reader, source_jobs
    from .planner import Planner

    planner = Planner(index, synthesis, seed=0, spatial=SpatialConfig(size=(size, size)))
    reader = select_reader(index)
    pool = ThreadPoolExecutor(threads)
    t = {"plan": 0.0, "decode_and_resize": 0.0, "synthesize": 0.0}
    for b in range(batches):
        t0 = time.perf_counter()
        plans = planner.plan_many(range(b * batch, (b + 1) * batch))
        t1 = time.perf_counter()
        stacks = decode_cpu(source_jobs(plans), index, reader, (size, size), pool)
        t2 = time.perf_counter()
        synthesize_reference(stacks, RecipeTables.from_plans(plans), dtype=OutDType.FLOAT16)
        t3 = time.perf_counter()
        t["plan"] += t1 - t0
        t["decode_and_resize"] += t2 - t1
        t["synthesize"] += t3 - t2
    pool.shutdown()
    return {k: v / batches for k, v in t.items()}


# ---------------------------------------------------------------------------------- the run
@dataclass
class BenchSettings:
    quick: bool = False
    device: str = "auto"
    batch_sizes: tuple[int, ...] = (8, 16, 32)
    threads: tuple[int, ...] = ()  # default: all cores (and half of them)
    frames: tuple[int, ...] = (8, 16)  # clip lengths T
    sizes: tuple[int, ...] = (112, 224)
    arch: str = "resnet50"
    count: int = 10
    warmup: int = 3
    data: BenchDataSpec = BenchDataSpec()

    @classmethod
    def quick_settings(cls, device: str = "auto") -> "BenchSettings":
        return cls(quick=True, device=device, batch_sizes=(4,), threads=(), frames=(8,), sizes=(64,),
                   arch="resnet18", count=2, warmup=1, data=QUICK_DATA)


GOALS = {
    "gpu": [("pipeline / baseline (all cores)", 10.0), ("pipeline / decode-only", 0.8),
            ("kernel / copy bandwidth", 0.7), ("train-step stall fraction", 0.05)],
    "cpu": [("pipeline / baseline (same cores)", 1.0)],
}


def run_bench(settings: BenchSettings, out: str | os.PathLike, tag: str | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    from .gpu import resolve_device

    say = progress or (lambda msg: log.info("%s", msg))
    device = resolve_device(settings.device)
    cores = os.cpu_count() or 1
    threads = settings.threads or tuple(sorted({max(1, cores // 2), cores}))
    say(f"generating/loading benchmark data {settings.data}")
    index = bench_data(settings.data)
    rows: list[dict[str, Any]] = []
    T0, S0 = settings.frames[0], settings.sizes[0]
    for T in settings.frames:
        for size in settings.sizes:
            syn = SynthesisConfig(tau=T // 2)
            for B in settings.batch_sizes:
                for n in threads:
                    if (T, size) != (T0, S0) and (B, n) != (settings.batch_sizes[0], threads[-1]):
                        continue  # full grid on the first (T, size) only; one point elsewhere
                    common = dict(T=T, size=size, batch=B, threads=n)
                    say(f"pipeline / decode-only / baseline: T={T} size={size} batch={B} threads={n}")
                    rows.append({**common, **bench_pipeline(index, device, B, n, syn, size, settings.count, settings.warmup)})
                    rows.append({**common, **bench_decode_only(index, device, B, n, syn, size, settings.count,
                                                               settings.warmup)})
                    rows.append({**common, **bench_baseline(index, device, B, n, syn, size, settings.count,
                                                            settings.warmup)})
                    for dec in ("decord", "torchcodec"):
                        if _importable(dec) and (T, size, n) == (T0, S0, threads[-1]):
                            try:
                                rows.append({**common, **bench_baseline(index, device, B, n, syn, size, settings.count,
                                                                        settings.warmup, decoder=dec)})
                            except Exception as e:  # noqa: BLE001 - an optional baseline must not end the run
                                log.warning("baseline with %s failed: %s", dec, e)
    say("kernel vs copy")
    kB = settings.batch_sizes[-1]
    rows.append({"T": T0, "size": 224 if not settings.quick else S0, "batch": kB, "threads": None,
                 **bench_kernel(device, kB, T0, 224 if not settings.quick else S0, 5 if settings.quick else 20)})
    say(f"training step TSM-{settings.arch}")
    rows.append({"T": T0, "size": S0 if settings.quick else 224, "batch": settings.batch_sizes[0], "threads": threads[-1],
                 **bench_train_step(index, device, settings.arch, settings.batch_sizes[0], threads[-1],
                                    SynthesisConfig(tau=T0 // 2), S0 if settings.quick else 224,
                                    settings.count, settings.warmup)})
    profile = stage_profile(index, settings.batch_sizes[0], threads[-1], SynthesisConfig(tau=T0 // 2), S0)
    result = {
        "benchmark": "bsp-dali bench", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": device,
        "machine": describe_machine(), "settings": _settings_json(settings, threads), "rows": rows,
        "cpu_stage_profile": profile, "goals": evaluate_goals(rows, device, threads),
    }
    _check_sane(result)
    write_results(result, Path(out), tag or (device + ("-quick" if settings.quick else "")))
    return result


def _importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except Exception:  # noqa: BLE001
        return False


def _settings_json(s: BenchSettings, threads: Sequence[int]) -> dict[str, Any]:
    d = {k: v for k, v in s.__dict__.items() if k != "data"}
    d["threads"] = list(threads)
    d["data"] = dict(s.data.__dict__, codec="h264", bframes=3, crf=23, content="procedural demo classes",
                     note=" ".join((BenchDataSpec.__doc__ or "").split()))
    d["statistic"] = "delivered clips (frames) / wall time over `count` batches after `warmup` batches"
    return d


def evaluate_goals(rows: list[dict[str, Any]], device: str, threads: Sequence[int]) -> list[dict[str, Any]]:
    """Each goal of the benchmark issue, measured against the rows (best batch size, all cores)."""
    def best(kind: str, n: int | None = None) -> float | None:
        vals = [r["clips_per_s"] for r in rows if r["row"] == kind and (n is None or r.get("threads") == n)
                and (kind != "baseline" or r["decoder"].startswith("pyav"))]
        return max(vals) if vals else None

    n = threads[-1]
    pipe, base, dec = best("pipeline", n), best("baseline", n), best("decode-only", n)
    kern = next((r for r in rows if r["row"] == "kernel"), {})
    train = next((r for r in rows if r["row"] == "train-step"), {})
    measured = {
        "pipeline / baseline (all cores)": (pipe / base) if pipe and base else None,
        "pipeline / baseline (same cores)": (pipe / base) if pipe and base else None,
        "pipeline / decode-only": (pipe / dec) if pipe and dec else None,
        "kernel / copy bandwidth": kern.get("fraction_of_copy"),
        "train-step stall fraction": train.get("stall_fraction"),
    }
    out = []
    for name, target in GOALS[device]:
        value = measured[name]
        lower_is_better = "stall" in name
        met = value is not None and (value <= target if lower_is_better else value >= target)
        out.append({"goal": name, "target": target, "measured": value, "met": met})
    return out


def _check_sane(result: dict[str, Any]) -> None:
    for r in result["rows"]:
        for k in ("clips_per_s", "frames_per_s", "GBps"):
            if k in r and not (np.isfinite(r[k]) and r[k] > 0):
                raise RuntimeError(f"benchmark row {r['row']} has an insane {k}: {r[k]}")


def write_results(result: dict[str, Any], out: Path, tag: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"bench-{tag}.json", "md": out / f"bench-{tag}.md", "png": out / f"bench-{tag}.png"}
    paths["json"].write_text(json.dumps(result, indent=1))
    paths["md"].write_text(markdown(result))
    plot(result, paths["png"])
    return paths


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# bsp-dali bench ({result['device']}, {result['date']})", "",
             f"Machine: {m.get('cpu')} ({m.get('cpu_cores')} cores), GPU: {m.get('gpu') or 'none'}"
             + (f", driver {m.get('nvidia_driver')}, CUDA runtime {m.get('cuda_runtime')}" if m.get("gpu") else ""),
             f"Versions: python {m.get('python')}, torch {m.get('torch')}, PyAV {m.get('pyav')}, DALI {m.get('dali')}, "
             f"CuPy {m.get('cupy')}, numpy {m.get('numpy')}", "",
             f"Settings: `{json.dumps(result['settings'])}`", "",
             "| row | decoder | T | size | batch | threads/workers | clips/s | frames/s | s/batch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["row"] in ("pipeline", "baseline", "decode-only"):
            lines.append(f"| {r['row']} | {r['decoder']} | {r['T']} | {r['size']} | {r['batch']} | {r['threads']} | "
                         f"{r['clips_per_s']:.2f} | {r['frames_per_s']:.1f} | {r['seconds_per_batch']:.3f} |")
    lines += ["", "| kernel | traffic | GB/s | copy GB/s | fraction of copy |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["row"] == "kernel":
            lines.append(f"| {r['decoder']} (batch {r['batch']}, T {r['T']}, {r['size']}x{r['size']}) | "
                         f"{r['traffic_bytes'] / 1e6:.1f} MB | {r['GBps']:.2f} | {r['copy_GBps']:.2f} | {r['fraction_of_copy']:.3f} |")
    lines += ["", "| training step | static batch s | fed by pipeline s | stall fraction | data-wait fraction |",
              "|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["row"] == "train-step":
            lines.append(f"| {r['decoder']} batch {r['batch']} {r['size']}x{r['size']} T {r['T']} | {r['static_seconds']:.3f} | "
                         f"{r['fed_seconds']:.3f} | {r['stall_fraction']:.3f} | {r['data_wait_fraction']:.3f} |")
    lines += ["", "## Goals", "", "| goal | target | measured | met |", "|---|---|---|---|"]
    for g in result["goals"]:
        v = "n/a" if g["measured"] is None else f"{g['measured']:.3f}"
        lines.append(f"| {g['goal']} | {g['target']} | {v} | {'yes' if g['met'] else 'no'} |")
    prof = result["cpu_stage_profile"]
    total = sum(prof.values()) or 1.0
    lines += ["", "## Where the time goes (CPU stages, one after the other, seconds per batch)", ""]
    lines += [f"- {k}: {v:.3f} s ({100 * v / total:.0f}%)" for k, v in prof.items()]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Clips/s of pipeline, decode-only and baseline per batch size (first T and size, most threads)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install 'bsp-dali[bench]')")
        return
    s = result["settings"]
    T0, S0, n = s["frames"][0], s["sizes"][0], s["threads"][-1]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    kinds = ("pipeline", "decode-only", "baseline")
    Bs = s["batch_sizes"]
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        vals = [next((r["clips_per_s"] for r in result["rows"] if r["row"] == kind and r["T"] == T0 and r["size"] == S0
                      and r["batch"] == B and r["threads"] == n and (kind != "baseline" or r["decoder"].startswith("pyav"))), 0)
                for B in Bs]
        ax.bar([i + k * width for i in range(len(Bs))], vals, width, label=kind)
    ax.set_xticks([i + width for i in range(len(Bs))], [str(b) for b in Bs])
    ax.set_xlabel("batch size")
    ax.set_ylabel("synthesized clips / s")
    m = result["machine"]
    ax.set_title(f"{result['device']}: {m.get('gpu') or m.get('cpu')} | T={T0}, {S0}x{S0}, {n} threads", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
