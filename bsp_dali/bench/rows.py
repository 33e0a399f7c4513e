"""The rows of ``bsp-dali bench``: each measures one thing, on the same data and plans.

Loader rows (``pipeline``, ``baseline``) time their delivered batches with
:func:`bsp_dali.measure.steady_rate` (warm-up that drains every queue, then a window of at least
30 batches and 10 s; the rate over each half beside the whole). Every batch also counts the
frames a decoder must decode to deliver it, from the manifest's keyframe tables
(:meth:`VideoInfo.frames_to_decode`): a clip of 8 frames from a file with a keyframe every 250
frames costs ~130 decoded frames, so loaders are compared with the decode ceilings in decoded
frames/s, not clips/s.

Ceiling rows measure the hardware, not this project's code: ``cpu-decode-ceiling`` (PyAV decoding
whole files front to back, one process per core) and ``gpu-decode-ceiling`` (DALI's video reader
decoding whole files front to back on every NVDEC engine, one pipeline per engine).

``kernel`` times the synthesis kernel against a copy of the same bytes; ``train-step`` a TSM
training step fed by the pipeline against the same step on a batch already in memory, both
through :class:`bsp_dali.measure.LoopTimer` (the accounting of ``bsp-dali train``).
"""

from __future__ import annotations

import itertools
import logging
import queue
import statistics
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..data.index import DatasetIndex
from ..plan.augment import SpatialConfig, apply_cpu
from ..plan.config import SynthesisConfig
from ..measure import (STEADY, LoopTimer, UtilSampler, Window, dataloader_warmup, prefetch_warmup,
                       steady_rate)
from ..synth.tables import OutDType, RecipeTables
from ..synth.synthesis import synthesize_reference

log = logging.getLogger(__name__)

BASELINE_PREFETCH = 2  # DataLoader prefetch_factor of the baseline (PyTorch's default)
CEILING_FILES_MAX = 256  # files the ceilings cycle through (a user's folder may hold 240k)


# ---------------------------------------------------------------------------------- counting
def decode_cost(index: DatasetIndex, plans: Sequence[Any]) -> int:
    """Frames a seeking decoder decodes to deliver ``plans``: per source, from the keyframe at or
    before its first planned frame through its last (the manifest's keyframe table)."""
    total = 0
    for p in plans:
        for src, frames in zip(p.sources, p.frames):
            total += index.videos[src.video].frames_to_decode(min(frames), max(frames))
    return total


def plan_counts(index: DatasetIndex, plans: Sequence[Any]) -> dict[str, int]:
    """What a batch delivers: clips, planned source frames, and frames decoded for them."""
    return {"clips": len(plans), "frames": sum(len(f) for p in plans for f in p.frames),
            "decoded_frames": decode_cost(index, plans)}


def batch_counts(index: DatasetIndex, raw: Any) -> dict[str, int]:
    """:func:`plan_counts` of a pipeline batch; where the iterator reports the units it decoded
    (``raw.windows``: decode-once windows that samples may share), the decoded frames are those
    units' cost from the keyframe tables, not the sum over sources."""
    counts = plan_counts(index, raw.plans)
    windows = getattr(raw, "windows", None)
    if windows is not None:
        counts["decoded_frames"] = windows.decode_cost(
            lambda u: index.videos[u.video].frames_to_decode(u.start, u.stop - 1))
    return counts


def _sync(device: str) -> Callable[[], None] | None:
    if device != "gpu":
        return None
    import torch

    return torch.cuda.synchronize


def _utilized(sampler: Callable[[], Any] | None, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``'s row, with NVML utilization sampled while it ran (GPU rows)."""
    if sampler is None:
        return run()
    with UtilSampler(sampler) as util:
        row = run()
    row["utilization"] = util.summary()
    return row


def _per_clip(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("clips_per_s"):
        row["decoded_frames_per_clip"] = row["decoded_frames_per_s"] / row["clips_per_s"]
    return row


# ---------------------------------------------------------------------------------- loader rows
def bench_pipeline(index: DatasetIndex, device: str, batch: int, threads: int, synthesis: SynthesisConfig,
                   size: int, window: Window = STEADY, dtype: str = "float16",
                   sampler: Callable[[], Any] | None = None, ahead: int | None = None,
                   pipelines: int | None = None) -> dict[str, Any]:
    """``BSPIterator`` as a training loop would use it (PyTorch tensors on the device). ``ahead``
    and ``pipelines`` override the decode stage's defaults (the row is then a ``variant``)."""
    from ..iterator import BSPIterator

    it = BSPIterator(index, batch, synthesis=synthesis, spatial=SpatialConfig(size=(size, size)), device=device,
                     num_threads=threads, epoch_size=batch * 10**7, dtype=dtype, return_recipes=False,
                     decode_ahead=ahead, pipelines=pipelines)

    def run() -> dict[str, Any]:
        batches = ((it.to_torch(r), r) for r in it.iter_raw())
        res = steady_rate(batches, lambda b: batch_counts(index, b[1]), warmup=prefetch_warmup(it.depth),
                          window=window, sync=_sync(device), primary="clips")
        row = {"row": "pipeline", "decoder": it.decoder_description, "decode_ahead": it.stage.ahead,
               "pipelines": it.stage.pipelines, **res.to_json()}
        if ahead is not None or pipelines is not None:
            row["variant"] = True
            row["decoder"] += f" [variant: decode_ahead {it.stage.ahead}, {it.stage.pipelines} pipeline(s)]"
        return row

    try:
        return _per_clip(_utilized(sampler, run))
    finally:
        it.close()


class _BaselineDataset:
    """One synthesized sample per item, the way a user would write it in a DataLoader: decode the
    planned frames, crop/resize/flip with Pillow, synthesize with NumPy."""

    def __init__(self, index: DatasetIndex, synthesis: SynthesisConfig, size: int, decoder: str):
        self.index, self.synthesis, self.size, self.decoder = index, synthesis, size, decoder
        self._planner = None
        self._reader = None

    def __len__(self) -> int:
        return 10**9

    def _read(self, video: Any, frames: Sequence[int]) -> np.ndarray:
        if self.decoder in ("pyav", "pyav-tuned"):
            if self._reader is None:
                from ..decode.pyav import PyAVReader

                # pyav: PyAV's defaults, as a user writes it; pyav-tuned: the RGB conversion on
                # the worker's own thread, the one PyAV setting the pipeline changes (a reference)
                self._reader = PyAVReader(self.index, rgb_threads=1 if self.decoder == "pyav-tuned" else 0)
            return self._reader.read(video, frames)
        path = self.index.resolve(video.path)
        if self.decoder == "decord":
            import decord

            return decord.VideoReader(path).get_batch(list(frames)).asnumpy()
        from torchcodec.decoders import VideoDecoder

        return VideoDecoder(path).get_frames_at(list(frames)).data.permute(0, 2, 3, 1).numpy()

    def __getitem__(self, i: int) -> tuple[Any, int, int, int]:
        import torch

        from ..plan.planner import Planner

        if self._planner is None:
            self._planner = Planner(self.index, self.synthesis, seed=0,
                                    spatial=SpatialConfig(size=(self.size, self.size)))
        plan = self._planner.plan(i, 0)
        stacks = [apply_cpu(self._read(self.index.videos[s.video], f), plan.crop, plan.flip, (self.size, self.size))
                  for s, f in zip(plan.sources, plan.frames)]
        video = synthesize_reference(stacks, RecipeTables.from_plans([plan]), dtype=OutDType.FLOAT32)[0]
        counts = plan_counts(self.index, [plan])
        return torch.from_numpy(video), plan.label, counts["frames"], counts["decoded_frames"]


def bench_baseline(index: DatasetIndex, device: str, batch: int, workers: int, synthesis: SynthesisConfig,
                   size: int, window: Window = STEADY, decoder: str = "pyav",
                   sampler: Callable[[], Any] | None = None) -> dict[str, Any]:
    """A PyTorch DataLoader with ``workers`` processes, batches copied to the device (pinned)."""
    import torch

    ds = _BaselineDataset(index, synthesis, size, decoder)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, pin_memory=device == "gpu",
                                         prefetch_factor=BASELINE_PREFETCH if workers else None)
    target = torch.device("cuda") if device == "gpu" else torch.device("cpu")

    def batches() -> Iterator[tuple[Any, dict[str, int]]]:
        for video, label, frames, decoded in loader:
            yield video.to(target, non_blocking=True).half(), {
                "clips": len(label), "frames": int(frames.sum()), "decoded_frames": int(decoded.sum())}

    gen = batches()

    def run() -> dict[str, Any]:
        res = steady_rate(gen, lambda b: b[1], warmup=dataloader_warmup(workers, BASELINE_PREFETCH),
                          window=window, sync=_sync(device), primary="clips")
        return {"row": "baseline", "decoder": f"{decoder} in {workers} DataLoader workers", **res.to_json()}

    try:
        return _per_clip(_utilized(sampler, run))
    finally:
        gen.close()  # ends the DataLoader's iterator: its workers shut down


# ---------------------------------------------------------------------------------- ceilings
def _ceiling_files(index: DatasetIndex) -> list[str]:
    return [index.resolve(v.path) for v in index.videos[:CEILING_FILES_MAX]]


def decode_whole_file(path: str) -> int:
    """Decode every frame of a file with PyAV on one thread (no colour conversion): the decoder
    alone. Returns the number of frames."""
    import av

    n = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one process per core: no frame threads on top
        for _ in container.decode(stream):
            n += 1
    return n


def _ordered_results(submit: Callable[[Any], Any], items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Results of ``submit(item).result()`` in order, with ``depth`` submissions outstanding (a
    bounded window, unlike ``Pool.imap`` over an endless input)."""
    pending: list[Any] = []
    for item in items:
        pending.append(submit(item))
        if len(pending) >= depth:
            yield pending.pop(0).result()


def bench_cpu_ceiling(index: DatasetIndex, processes: int, window: Window = STEADY) -> dict[str, Any]:
    """PyAV decoding whole files front to back in ``processes`` processes: decoded frames/s."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    files = _ceiling_files(index)
    depth = BASELINE_PREFETCH * processes
    # forked like DataLoader workers (a spawned worker re-imports the caller's main module); the
    # bench runs this row first, before any loader has started threads
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    pool = ProcessPoolExecutor(processes, mp_context=ctx)
    results = _ordered_results(lambda f: pool.submit(decode_whole_file, f), itertools.cycle(files), depth)
    try:
        res = steady_rate(results, lambda n: {"decoded_frames": n, "files": 1},
                          warmup=dataloader_warmup(processes, BASELINE_PREFETCH), window=window,
                          primary="decoded_frames")
    finally:
        results.close()
        pool.shutdown(wait=True, cancel_futures=True)
    return {"row": "cpu-decode-ceiling", "ceiling": True,
            "decoder": f"PyAV (FFmpeg) whole files, {processes} processes x 1 thread, no colour conversion",
            **res.to_json()}


def gpu_ceiling_pipelines(index: DatasetIndex, pipelines: int, device_id: int = 0, sequence: int = 16,
                          batch: int = 4) -> list[Any]:
    """The (unbuilt) DALI pipelines of the GPU decode ceiling: ``fn.readers.video`` on the GPU
    over a slice of the files each, windows of ``sequence`` consecutive frames (``step`` =
    ``sequence``: every frame decoded once, front to back), no shuffling. DALI checks the
    arguments here; ``build()`` needs a GPU."""
    from ..gpu import import_dali

    dali = import_dali()
    from nvidia.dali import fn, types
    if pipelines < 1:
        raise ValueError(f"pipelines ({pipelines}) must be >= 1")
    files = _ceiling_files(index)

    @dali.pipeline_def
    def whole_files(names: list[str]):  # pragma: no cover - traced by DALI
        return fn.readers.video(device="gpu", filenames=names, sequence_length=sequence, step=sequence, stride=1,
                                random_shuffle=False, skip_vfr_check=True, dtype=types.UINT8, name="reader")

    return [whole_files(names=files[k::pipelines] or files, batch_size=batch, num_threads=2, device_id=device_id,
                        prefetch_queue_depth=2) for k in range(pipelines)]


def bench_gpu_ceiling(index: DatasetIndex, pipelines: int, window: Window = STEADY,
                      sampler: Callable[[], Any] | None = None, device_id: int = 0, sequence: int = 16,
                      batch: int = 4) -> dict[str, Any]:
    """DALI's GPU video reader decoding whole files front to back in ``pipelines`` pipelines on
    threads, one per NVDEC engine (the legacy reader keeps one decoder per pipeline and reuses it
    across files): decoded frames/s. Pipelines run on threads (``run()`` releases the GIL).

    Written for and argument-checked on the CPU (:func:`gpu_ceiling_pipelines`), not yet run on a
    GPU."""
    pipes = gpu_ceiling_pipelines(index, pipelines, device_id, sequence, batch)
    for p in pipes:
        p.build()
    out: queue.Queue = queue.Queue(maxsize=pipelines)
    stop = threading.Event()

    def hand_over(item: Any) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def drive(p: Any) -> None:
        while not stop.is_set():
            try:
                p.run()  # releases the GIL: pipelines on threads decode concurrently
            except StopIteration:  # the end of this pipeline's files: start them over
                p.reset()
                continue
            except Exception as e:  # noqa: BLE001 - handed to the consumer
                hand_over(e)
                return
            hand_over(batch * sequence)

    def results() -> Iterator[int]:
        while True:
            item = out.get()
            if isinstance(item, Exception):
                raise item
            yield item

    threads = [threading.Thread(target=drive, args=(p,), daemon=True, name=f"bsp-nvdec-{k}")
               for k, p in enumerate(pipes)]

    def run() -> dict[str, Any]:
        for t in threads:
            t.start()
        # each pipeline holds up to 2 finished batches in DALI's queue and one in hand here
        res = steady_rate(results(), lambda n: {"decoded_frames": n},
                          warmup=dataloader_warmup(pipelines, 2) + pipelines, window=window,
                          primary="decoded_frames")
        return {"row": "gpu-decode-ceiling", "ceiling": True,
                "decoder": f"DALI readers.video (GPU) whole files, {pipelines} pipelines (one per NVDEC engine)",
                **res.to_json()}

    try:
        return _utilized(sampler, run)
    finally:
        stop.set()
        for t in threads:
            if t.ident is not None:
                t.join(timeout=30)


# ---------------------------------------------------------------------------------- kernel
def bench_kernel(device: str, batch: int, T: int, size: int, repeats: int) -> dict[str, Any]:
    """The synthesis kernel (GPU) or the NumPy reference (CPU) against a copy of the same traffic."""
    from ..plan.planner import Planner

    index = DatasetIndex.from_lists([f"v{i}.mp4" for i in range(64)], [f"c{i % 8}" for i in range(64)], [300] * 64)
    plans = Planner(index, SynthesisConfig(tau=T // 2), seed=0).plan_many(range(batch))
    rng = np.random.default_rng(0)
    sources = [rng.integers(0, 256, (len(fr), size, size, 3), dtype=np.uint8) for p in plans for fr in p.frames]
    tables = RecipeTables.from_plans(plans)
    dtype = OutDType.FLOAT16
    nbytes = int((tables.src >= 0).sum()) * size * size * 3 + batch * T * size * size * 3 * dtype.storage.itemsize
    if device == "gpu":
        import cupy as cp

        from ..synth.kernel_cupy import synthesize_cupy

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
        # the iterator's path: output from PyTorch's allocator, tables through one pinned copy
        from ..synth.torch_interop import GPUSynthesis

        gpu_synthesis = GPUSynthesis(cp.cuda.Device().id, dtype=dtype)
        extra = {"iterator_path_seconds": events(lambda: gpu_synthesis(dev, tables))}
        gpu_synthesis.close()
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
        extra = {}
    return {"row": "kernel", "decoder": name, "traffic_bytes": nbytes, "seconds": tk, "GBps": nbytes / tk / 1e9,
            "copy_GBps": 2 * a.nbytes / tc / 1e9, "fraction_of_copy": (nbytes / tk) / (2 * a.nbytes / tc), **extra}


# ---------------------------------------------------------------------------------- training step
def timed_loop(batches: Iterator[Any], step: Callable[[Any], None], clips: int, warmup: int, window: Window,
               sync: Callable[[], None] | None, event: Callable[[], Any] | None) -> Any:
    """Run ``step`` over ``batches`` as ``bsp-dali train`` does, timed by :class:`LoopTimer`
    over one interval of at least ``window`` steps and seconds after ``warmup`` steps."""
    for _ in range(warmup):
        step(next(batches))
    if sync is not None:
        sync()
    timer = LoopTimer(sync=sync, event=event)
    t0, n = time.perf_counter(), 0
    while n < window.min_batches or time.perf_counter() - t0 < window.min_seconds:
        b = timer.next_batch(batches)
        step(b)
        timer.step_done(clips)
        n += 1
    return timer.report()


def stall_fraction(static_rate: float, fed_rate: float) -> float:
    """The share of the static step's rate that feeding it from the loader loses: 1 - fed / static.
    Not clamped: a fed loop measured faster than the static one (noise) shows as negative."""
    if not (static_rate > 0):
        raise ValueError(f"static_rate ({static_rate}) must be > 0")
    return 1.0 - fed_rate / static_rate


def bench_train_step(index: DatasetIndex, device: str, arch: str, batch: int, threads: int,
                     synthesis: SynthesisConfig, size: int, window: Window = STEADY,
                     sampler: Callable[[], Any] | None = None) -> dict[str, Any]:
    """A TSM training step fed by the pipeline against the same step on one batch held in memory.
    ``stall_fraction`` = 1 - fed rate / static rate, unclamped (a small negative value is noise);
    ``data_wait_fraction`` is what ``bsp-dali train`` would log for the fed loop."""
    import torch

    from bsp_models import ClipClassifier, create_encoder

    from ..gpu import autocast as autocast_for
    from ..iterator import BSPIterator

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    model = ClipClassifier(create_encoder(arch, synthesis.T), synthesis.num_classes).to(dev)
    if device == "gpu":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    autocast = autocast_for(device)
    sync = _sync(device)
    event = (lambda: torch.cuda.Event(enable_timing=True)) if device == "gpu" else None

    def step(b: dict[str, Any]) -> None:
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(b["video"])["logits"].float(), b["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    it = BSPIterator(index, batch, synthesis=synthesis, spatial=SpatialConfig(size=(size, size)), device=device,
                     num_threads=threads, epoch_size=batch * 10**7, dtype="float32")

    def run() -> dict[str, Any]:
        loader = iter(it)
        fixed = next(loader)
        static = timed_loop(itertools.repeat(fixed), step, batch, 3, window, sync, event)
        fed = timed_loop(loader, step, batch, prefetch_warmup(it.depth), window, sync, event)
        return {"row": "train-step", "decoder": f"TSM-{arch}", "static_seconds": 1 / static.clips_per_s * batch,
                "fed_seconds": 1 / fed.clips_per_s * batch, "static_clips_per_s": static.clips_per_s,
                "clips_per_s": fed.clips_per_s, "stall_fraction": stall_fraction(static.clips_per_s, fed.clips_per_s),
                "data_wait_fraction": fed.data_wait, "host_wait_fraction": fed.host_wait,
                "static": static.to_json(), "fed": fed.to_json(),
                "window": {"min_batches": window.min_batches, "min_seconds": window.min_seconds,
                           "quick": window.quick}}

    try:
        return _utilized(sampler, run)
    finally:
        it.close()


# ---------------------------------------------------------------------------------- CPU stages
def stage_profile(index: DatasetIndex, batch: int, threads: int, synthesis: SynthesisConfig, size: int,
                  batches: int = 3) -> dict[str, float]:
    """Seconds per batch of each stage of the CPU pipeline, run one after the other (no overlap):
    where the time goes. Planning (plans and decode windows), decoding + resizing (the decode
    stage's ``threads`` worker processes, all busy on one batch), synthesis (the NumPy reference).
    A profile, not a throughput (the pipeline overlaps the three); benchmarks/profile_cpu.py
    splits CPU seconds by process and thread."""
    from ..decode.stage import DecodeStage, StageOptions
    from ..plan.planner import Planner

    planner = Planner(index, synthesis, seed=0, spatial=SpatialConfig(size=(size, size)))
    stage = DecodeStage(index, planner, StageOptions(size=(size, size), device="cpu", decoder="pyav",
                                                     num_threads=threads))
    t = {"plan": 0.0, "decode_and_resize": 0.0, "synthesize": 0.0}
    try:
        stage.decode(0, list(range(batch)))  # starts the workers: not timed
        for b in range(1, batches + 1):
            t0 = time.perf_counter()
            plans = [stage.plan(i, 0) for i in range(b * batch, (b + 1) * batch)]
            windows = stage.windows(plans)
            t1 = time.perf_counter()
            stacks = stage.read(windows.units)
            t2 = time.perf_counter()
            synthesize_reference(stacks, RecipeTables.from_windows(plans, windows), dtype=OutDType.FLOAT16)
            t3 = time.perf_counter()
            t["plan"] += t1 - t0
            t["decode_and_resize"] += t2 - t1
            t["synthesize"] += t3 - t2
            del stacks
    finally:
        stage.close()
    return {k: v / batches for k, v in t.items()}


__all__ = ["bench_baseline", "bench_cpu_ceiling", "bench_gpu_ceiling", "bench_kernel", "bench_pipeline",
           "bench_train_step", "batch_counts", "decode_cost", "decode_whole_file", "gpu_ceiling_pipelines", "plan_counts",
           "stage_profile", "stall_fraction", "timed_loop"]
