"""The drop-in iterator: synthesized BSP batches for any PyTorch training loop.

    loader = BSPIterator("data/kinetics", batch_size=32)      # or a DatasetIndex
    for epoch in range(10):
        for batch in loader:                                    # a new epoch each pass
            logits = model(batch["video"])                      # (N, C, T, H, W), on the GPU if any
            loss = F.cross_entropy(logits, batch["label"])

Each batch is a dict: ``video`` (NCTHW, or NTCHW with ``layout="NTCHW"``; float32 by default),
``label`` (int64, the boundary class), ``mu`` (int64 change point, -1 for none), ``heatmap``
(float32, N x T regression target), ``action`` (int64, class of the first source), ``index``
(int64 sample indices) and, with ``return_recipes=True``, ``recipes`` (BSP-METHOD.md objects).

Sample ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``; shards (from
``torch.distributed`` when it is initialised) take the sample indices ``rank, rank+world, ...``, so
they are disjoint and together cover the epoch; ``state_dict()`` resumes mid-epoch with identical
samples. ``mode="action"`` yields plain clips labelled with their action class (the vanilla stream).

A video that decodes during indexing but fails here is banned: the samples that used it are
replaced by deterministic replacement draws, the failure is counted (``failures``), and training
goes on. More than ``max_bad_videos`` such files end in :class:`DecodeFailures` naming them.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from .augment import SpatialConfig
from .config import ChoiceEnum, SynthesisConfig
from .demo import DEMO_SCHEME
from .decode import (DecodeError, FrameReader, SourceJob, decode_cpu, default_threads, read_bytes,
                     select_reader, source_jobs)
from .gpu import GPUUnavailableError, resolve_device
from .index import DatasetIndex
from .planner import Planner, SamplePlan
from .synthesis import Layout, OutDType, RecipeTables, synthesize

log = logging.getLogger(__name__)

MAX_BAD_VIDEOS = 32  # files that may fail in the pipeline before the run stops (tests lower it)
STATE_VERSION = 1


class LastBatchPolicy(ChoiceEnum):
    """What to do with the samples of a shard that do not fill a last batch."""

    DROP = "drop"  # leave them out (every rank yields the same number of full batches)
    PARTIAL = "partial"  # yield a smaller last batch
    FILL = "fill"  # complete the last batch with the shard's first samples

    @classmethod
    def what(cls) -> str:
        return "last_batch_policy"


class DecodeFailures(RuntimeError):
    """Too many videos failed in the pipeline; ``failures`` lists (path, reason)."""

    def __init__(self, failures: Sequence[tuple[str, str]]):
        lines = "\n".join(f"  {p}: {r}" for p, r in failures)
        super().__init__(f"{len(failures)} videos failed to decode in the pipeline (more than allowed):\n{lines}")
        self.failures = list(failures)


@dataclass
class RawBatch:
    """A synthesized batch before conversion to PyTorch: ``video`` is NumPy (CPU) or CuPy (GPU)."""

    plans: list[SamplePlan]
    video: Any


def _dist_shard() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return 0, 1


class BSPIterator:
    """See the module docstring. Arguments:

    data: a :class:`DatasetIndex`, a manifest file, or a folder holding ``bsp-dali-manifest.json``.
    batch_size: samples per batch (per rank).
    synthesis, spatial: :class:`SynthesisConfig` and :class:`SpatialConfig` (defaults documented there).
    mode: ``"bsp"`` (synthesized boundaries) or ``"action"`` (plain clips, action labels).
    epoch_size: samples per epoch over all ranks (default: the number of videos).
    device: ``"auto"``, ``"cpu"`` or ``"gpu"``; decoder: ``"auto"``, ``"dali"`` or ``"pyav"`` (CPU).
    dtype, layout, mean, std: output format (see ``bsp_dali.synthesis``).
    shard: ``(rank, world_size)``; default from ``torch.distributed`` when initialised.
    """

    def __init__(self, data: DatasetIndex | str, batch_size: int, *, synthesis: SynthesisConfig | None = None,
                 spatial: SpatialConfig | None = None, mode: str = "bsp", seed: int = 0,
                 epoch_size: int | None = None, device: str = "auto", decoder: str = "auto",
                 dtype: OutDType | str = OutDType.FLOAT32, layout: Layout | str = Layout.NCTHW,
                 mean: Any = None, std: Any = None, last_batch_policy: LastBatchPolicy | str = LastBatchPolicy.DROP,
                 shard: tuple[int, int] | None = None, return_recipes: bool = False, num_threads: int | None = None,
                 prefetch: int = 2, device_id: int | None = None, max_bad_videos: int = MAX_BAD_VIDEOS,
                 reader: FrameReader | None = None):
        if isinstance(data, DatasetIndex):
            index = data
        else:
            from .ingest import load_data

            index = load_data(data)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size ({batch_size!r}) must be a positive integer")
        if mode not in ("bsp", "action"):
            raise ValueError(f"mode ({mode!r}) must be 'bsp' or 'action'")
        self.index = index
        self.batch_size = batch_size
        self.mode = mode
        self.synthesis = synthesis or SynthesisConfig()
        self.spatial = spatial or SpatialConfig()
        self.planner = Planner(index, self.synthesis, seed=seed, spatial=self.spatial)
        self.seed = seed
        self.epoch_size = len(index) if epoch_size is None else int(epoch_size)
        if self.epoch_size < 1:
            raise ValueError(f"epoch_size ({epoch_size}) must be >= 1")
        self.dtype, self.layout = OutDType.parse(dtype), Layout.parse(layout)
        self.mean, self.std = mean, std
        self.policy = LastBatchPolicy.parse(last_batch_policy)
        self.rank, self.world = shard if shard is not None else _dist_shard()
        if not (0 <= self.rank < self.world):
            raise ValueError(f"shard ({self.rank}, {self.world}) must satisfy 0 <= rank < world_size")
        if self.epoch_size < self.world:
            raise ValueError(f"epoch_size ({self.epoch_size}) is smaller than the number of shards ({self.world})")
        self.return_recipes = return_recipes
        self.num_threads = num_threads or default_threads()
        self.prefetch = max(1, int(prefetch))
        self.max_bad_videos = int(max_bad_videos)
        self.device = resolve_device(device)
        self.device_id = self._pick_device_id(device_id)
        self.decoder = self._pick_decoder(decoder)
        self.reader = reader or select_reader(index)
        self.epoch = 0
        self.position = 0  # next batch of the current epoch
        self.banned: dict[int, str] = {}  # video position -> reason
        self._dali: Any = None
        self._dali_cpu: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._worker: _Prefetcher | None = None
        if len(self) == 0:
            raise ValueError(f"an epoch of {self.epoch_size} samples over {self.world} shard(s) gives no batch of "
                             f"{batch_size} with last_batch_policy={self.policy.value}; lower batch_size or use 'partial'")

    # ------------------------------------------------------------------ set-up
    def _pick_device_id(self, device_id: int | None) -> int:
        if device_id is not None or self.device == "cpu":
            return int(device_id or 0)
        import os

        return int(os.environ.get("LOCAL_RANK", 0))

    def _pick_decoder(self, decoder: str) -> str:
        if decoder not in ("auto", "dali", "pyav"):
            raise ValueError(f"decoder ({decoder!r}) must be auto, dali or pyav")
        demo = bool(self.index.videos) and self.index.videos[0].path.startswith(DEMO_SCHEME)
        if demo:
            return "demo"
        if decoder == "auto":  # without DALI, PyAV decodes on the CPU (and the GPU synthesizes)
            return "dali" if _dali_installed() else "pyav"
        if decoder == "dali" and not _dali_installed():
            raise GPUUnavailableError("decoder='dali' was asked for but NVIDIA DALI is not installed")
        return decoder

    @property
    def decoder_description(self) -> str:
        """Which decoder reads which files, in words (for logs and the CLI)."""
        if self.decoder == "demo":
            return "procedural demo frames"
        if self.decoder == "pyav":
            return "PyAV (CPU)"
        if self.device == "gpu":
            return "DALI NVDEC (GPU)"
        return "DALI CPU for VP8/VP9/MJPEG, PyAV (CPU) for the rest"

    # ------------------------------------------------------------------ epoch bookkeeping
    def _shard_count(self) -> int:
        """Samples of this shard per epoch. DROP and FILL give every rank the same count (and so the
        same number of batches, as DDP needs); PARTIAL gives each rank exactly its own samples."""
        E, W, r = self.epoch_size, self.world, self.rank
        if self.policy is LastBatchPolicy.DROP:
            return E // W
        if self.policy is LastBatchPolicy.FILL:
            return -(-E // W)
        return (E - r + W - 1) // W

    def __len__(self) -> int:
        n, B = self._shard_count(), self.batch_size
        return n // B if self.policy is LastBatchPolicy.DROP else -(-n // B)

    def batch_indices(self, batch: int) -> list[int]:
        """Sample indices of this shard's ``batch``-th batch of an epoch."""
        n, B = self._shard_count(), self.batch_size
        local = list(range(batch * B, min((batch + 1) * B, n)))
        if self.policy is LastBatchPolicy.FILL:
            local += list(range(B - len(local)))  # complete the last batch from the shard's start
            own = (self.epoch_size - self.rank + self.world - 1) // self.world  # this rank's real samples
            local = [k % own for k in local]
        return [self.rank + k * self.world for k in local]

    def plan(self, sample_index: int, epoch: int) -> SamplePlan:
        """The plan of a sample, replaced deterministically if it used a banned video."""
        make = self.planner.plan if self.mode == "bsp" else self.planner.plan_action
        p = make(sample_index, epoch)
        if self.banned and any(s.video in self.banned for s in p.sources):
            p = make(sample_index, epoch, banned=frozenset(self.banned))
        return p

    def reset(self) -> None:
        """Start the next epoch (also done automatically when a finished epoch is iterated again)."""
        self._stop_worker()
        if self.position > 0:
            self.epoch += 1
        self.position = 0

    def set_epoch(self, epoch: int) -> None:
        self._stop_worker()
        self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        """Where the iterator is: the next batch to yield and the videos banned so far."""
        return {"version": STATE_VERSION, "epoch": self.epoch, "batch": self.position, "seed": self.seed,
                "rank": self.rank, "world": self.world, "batch_size": self.batch_size, "mode": self.mode,
                "banned": {self.index.videos[v].path: r for v, r in sorted(self.banned.items())}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"iterator state version {state.get('version')!r} is not supported")
        for key in ("seed", "batch_size", "mode"):
            if state[key] != getattr(self, key):
                raise ValueError(f"iterator state was saved with {key}={state[key]!r}, this iterator has "
                                 f"{getattr(self, key)!r}: the samples would differ")
        self._stop_worker()
        by_path = {v.path: i for i, v in enumerate(self.index.videos)}
        self.banned = {by_path[p]: r for p, r in state.get("banned", {}).items() if p in by_path}
        self.epoch, self.position = int(state["epoch"]), int(state["batch"])

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [(self.index.videos[v].path, r) for v, r in sorted(self.banned.items())]

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> "BSPIterator":
        if self.position >= len(self):
            self.epoch += 1
            self.position = 0
        self._stop_worker()
        self._worker = _Prefetcher(self, self.epoch, self.position)
        return self

    def __next__(self) -> dict[str, Any]:
        raw = self.next_raw()
        return self.to_torch(raw)

    def next_raw(self) -> RawBatch:
        """The next batch before PyTorch conversion (used by ``preview`` and the benchmarks)."""
        if self._worker is None:
            iter(self)
        assert self._worker is not None
        if self.position >= len(self):
            self._stop_worker()
            raise StopIteration
        item = self._worker.get()
        raw = self._finish(item)
        self.position += 1
        return raw

    def iter_raw(self) -> Iterator[RawBatch]:
        iter(self)
        while True:
            try:
                yield self.next_raw()
            except StopIteration:
                return

    def close(self) -> None:
        self._stop_worker()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "BSPIterator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self._stop_worker()
        except Exception:  # noqa: BLE001
            pass

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    # ------------------------------------------------------------------ the work of one batch
    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.num_threads, thread_name_prefix="bsp-read")
        return self._pool

    def _ban(self, video: int, reason: str) -> None:
        if video in self.banned:
            return
        path = self.index.resolve(self.index.videos[video].path)
        log.warning("excluding %s for the rest of the run: %s", path, reason)
        self.banned[video] = reason
        if len(self.banned) > self.max_bad_videos:
            raise DecodeFailures(self.failures)

    def _prepare(self, epoch: int, batch: int) -> Any:
        """Background thread: plans, and either finished CPU stacks or the encoded bytes for DALI."""
        ids = self.batch_indices(batch)
        plans = [self.plan(i, epoch) for i in ids]
        if self.decoder == "dali" and self.device == "gpu":
            return ("gpu", ids, plans, self._read_all(plans))
        return ("cpu", ids, *self._decode_cpu_batch(ids, epoch, plans))

    def _read_all(self, plans: Sequence[SamplePlan]) -> list[Any]:
        vids = [s.video for p in plans for s in p.sources]
        return list(self.pool.map(lambda v: _try(read_bytes, self.index, v), vids))

    def _decode_cpu_batch(self, ids: list[int], epoch: int, plans: list[SamplePlan]) -> tuple[list[SamplePlan], list[np.ndarray]]:
        while True:
            jobs = source_jobs(plans)
            stacks = self._decode_cpu_once(jobs)
            bad = [(job.video, err) for job, err in zip(jobs, stacks) if isinstance(err, DecodeError)]
            if not bad:
                return plans, stacks  # type: ignore[return-value]
            for v, err in bad:
                self._ban(v, err.reason)
            plans = [self.plan(i, epoch) for i in ids]

    def _decode_cpu_once(self, jobs: list[SourceJob]) -> list[Any]:
        """DALI's CPU decoder for the codecs it handles (when DALI is the decoder), PyAV for the rest."""
        from .pipeline import DALI_CPU_CODECS

        size = self.spatial.size
        out: list[Any] = [None] * len(jobs)
        use_dali = [self.decoder == "dali" and (self.index.videos[j.video].codec or "") in DALI_CPU_CODECS
                    for j in jobs]
        other = [k for k, d in enumerate(use_dali) if not d]
        if other:
            for k, stack in zip(other, decode_cpu([jobs[k] for k in other], self.index, self.reader, size, self.pool)):
                out[k] = stack
        dali = [k for k, d in enumerate(use_dali) if d]
        if dali:
            for k, stack in zip(dali, self._decode_dali([jobs[k] for k in dali], "cpu")):
                out[k] = stack
        return out

    def _decode_dali(self, jobs: list[SourceJob], device: str, data: list[Any] | None = None) -> list[Any]:
        """Decode jobs with DALI; a job that fails comes back as its :class:`DecodeError`."""
        from .pipeline import DaliPipelineError, SourceRequest

        data = data if data is not None else [_try(read_bytes, self.index, j.video) for j in jobs]
        out: list[Any] = list(data)  # DecodeErrors of unreadable files stay in place
        live = [k for k, d in enumerate(data) if not isinstance(d, DecodeError)]
        requests = [SourceRequest(data[k], jobs[k].frames, jobs[k].crop, jobs[k].flip) for k in live]
        if not requests:
            return out
        dec = self._dali_decoder(device, len(requests))
        try:
            stacks = dec.decode(requests)
        except DaliPipelineError:
            failed = set(dec.find_failures(requests))
            if not failed:
                raise
            for j in failed:
                k = live[j]
                out[k] = DecodeError(self.index.resolve(self.index.videos[jobs[k].video].path),
                                     f"DALI ({device}) could not decode the planned frames")
            return out
        for k, stack in zip(live, stacks):
            out[k] = stack
        return out

    def _dali_decoder(self, device: str, sources: int) -> Any:
        """The DALI pipeline for ``device``, (re)built when a batch has more sources than it takes."""
        from .pipeline import DaliDecoder

        attr = "_dali" if device == "gpu" else "_dali_cpu"
        dec = getattr(self, attr)
        if dec is None or dec.max_sources < sources:
            dec = DaliDecoder(self.spatial.size, device, max(2 * self.batch_size, sources), self.num_threads,
                              self.device_id)
            setattr(self, attr, dec)
        return dec

    def _finish(self, item: Any) -> RawBatch:
        """Main thread: GPU decode (DALI) and the synthesis kernel, or the CPU synthesis."""
        kind, ids, plans, payload = item
        if kind == "gpu":
            plans, stacks = self._decode_gpu_batch(ids, plans, payload)
        else:  # "cpu": decoded on the host; "done": already decoded on the device
            stacks = payload
        tables = RecipeTables.from_plans(plans)
        if self.device != "gpu":
            video = synthesize(stacks, tables, mean=self.mean, std=self.std, dtype=self.dtype, layout=self.layout)
            return RawBatch(plans, video)
        from .gpu import import_cupy

        cp = import_cupy()
        with cp.cuda.Device(self.device_id):
            if kind == "cpu":  # host-decoded stacks (PyAV): one upload each
                stacks = [cp.asarray(s) for s in stacks]
            video = synthesize(stacks, tables, mean=self.mean, std=self.std, dtype=self.dtype, layout=self.layout)
            # DALI reuses its output buffers on the next run: finish reading them first
            cp.cuda.get_current_stream().synchronize()
        return RawBatch(plans, video)

    def _decode_gpu_batch(self, ids: list[int], plans: list[SamplePlan], data: list[Any]) -> tuple[list[SamplePlan], list[Any]]:
        epoch = plans[0].epoch
        while True:
            jobs = source_jobs(plans)
            stacks = self._decode_dali(jobs, "gpu", data)
            bad = [(job.video, err) for job, err in zip(jobs, stacks) if isinstance(err, DecodeError)]
            if not bad:
                return plans, stacks
            for v, err in bad:
                self._ban(v, err.reason)
            plans = [self.plan(i, epoch) for i in ids]
            data = self._read_all(plans)

    def render(self, plans: Sequence[SamplePlan]) -> RawBatch:
        """Decode and synthesize given plans (not drawn by this iterator: ``extract`` and
        ``inspect`` build their own). A file that fails raises :class:`DecodeError`."""
        plans = list(plans)
        jobs = source_jobs(plans)
        if self.decoder == "dali" and self.device == "gpu":
            stacks = self._decode_dali(jobs, "gpu")
        else:
            stacks = self._decode_cpu_once(jobs)
        err = next((s for s in stacks if isinstance(s, DecodeError)), None)
        if err is not None:
            raise err
        return self._finish(("cpu" if not (self.decoder == "dali" and self.device == "gpu") else "done",
                             None, plans, stacks))

    # ------------------------------------------------------------------ PyTorch
    def to_torch(self, raw: RawBatch) -> dict[str, Any]:
        import torch

        from . import torch_view

        plans = raw.plans
        video = torch_view(raw.video, self.dtype)
        dev = video.device
        out = {
            "video": video,
            "label": torch.tensor([p.label for p in plans], dtype=torch.int64, device=dev),
            "mu": torch.tensor([-1 if p.mu is None else p.mu for p in plans], dtype=torch.int64, device=dev),
            "heatmap": torch.from_numpy(np.stack([p.heatmap for p in plans])).to(dev),
            "action": torch.tensor([p.action for p in plans], dtype=torch.int64, device=dev),
            "index": torch.tensor([p.index for p in plans], dtype=torch.int64, device=dev),
        }
        if self.return_recipes:
            out["recipes"] = [p.to_json() for p in plans]
        return out


class _Prefetcher:
    """Prepares the batches of one epoch, from a start position, in a background thread."""

    def __init__(self, it: BSPIterator, epoch: int, start: int):
        self.q: queue.Queue = queue.Queue(maxsize=it.prefetch)
        self._stop = threading.Event()
        # a weak reference: an iterator dropped mid-epoch is collected, and its __del__ stops us
        self.thread = threading.Thread(target=self._run, args=(weakref.ref(it), epoch, start, len(it)), daemon=True,
                                       name="bsp-prefetch")
        self.thread.start()

    def _run(self, ref: "weakref.ref[BSPIterator]", epoch: int, start: int, length: int) -> None:
        try:
            for b in range(start, length):
                it = ref()
                if it is None or self._stop.is_set():
                    return
                item = ("ok", it._prepare(epoch, b))
                del it
                while not self._stop.is_set():
                    try:
                        self.q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self.q.put(("error", e))

    def get(self) -> Any:
        while True:
            try:
                status, item = self.q.get(timeout=1.0)
            except queue.Empty:
                if not self.thread.is_alive() and self.q.empty():
                    raise RuntimeError("the prefetch thread stopped without a batch") from None
                continue
            if status == "error":
                raise item
            return item

    def stop(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self.q.get_nowait()
            except queue.Empty:
                break
        if threading.current_thread() is not self.thread:
            self.thread.join()  # never two prefetchers at once: they share the pool and DALI pipelines


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except DecodeError as e:
        return e


def _dali_installed() -> bool:
    try:
        import nvidia.dali  # noqa: F401

        return True
    except Exception:  # noqa: BLE001
        return False
