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

Decoding is the decode stage's (``bsp_dali.decode.stage``): it plans the windows to decode, routes them to
readers (DALI file-list readers on every NVDEC engine on the GPU; DALI's CPU reader for VP8/VP9/MJPEG
and PyAV for the rest on the CPU), and owns the failure policy: a video that decodes during
indexing but fails here is banned, the samples that used it are replaced by deterministic
replacement draws, the failure is counted (``failures``), and training goes on. More than
``max_bad_videos`` such files end in :class:`DecodeFailures` naming them. This module is the thin
wrapper around it, shaped like DALI's ``DALIGenericIterator``: epochs, shards, resume, PyTorch.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .data.index import DatasetIndex
from .decode.pyav import FrameReader
from .decode.stage import MAX_BAD_VIDEOS, DecodedBatch, DecodeFailures, Decoder, DecodeStage, StageOptions
from .decode.windows import BatchWindows
from .gpu import current_cuda_device, resolve_device
from .plan.augment import SpatialConfig
from .plan.config import ChoiceEnum, SynthesisConfig
from .plan.planner import ClipMode, Planner, SamplePlan
from .synth.tables import Layout, OutDType, RecipeTables
from .synth.synthesis import synthesize
from .synth.torch_interop import torch_view

log = logging.getLogger(__name__)

STATE_VERSION = 1
SYNTHESIZED_AHEAD = 1  # synthesized batches waiting for the consumer (CPU), besides `prefetch` decoded ones

__all__ = ["BSPIterator", "DecodeFailures", "LastBatchPolicy", "MAX_BAD_VIDEOS", "RawBatch"]


class LastBatchPolicy(ChoiceEnum):
    """What to do with the samples of a shard that do not fill a last batch."""

    DROP = "drop"  # leave them out (every rank yields the same number of full batches)
    PARTIAL = "partial"  # yield a smaller last batch
    FILL = "fill"  # complete the last batch with the shard's first samples

    @classmethod
    def what(cls) -> str:
        return "last_batch_policy"


@dataclass
class RawBatch:
    """A synthesized batch before conversion to PyTorch: ``video`` is NumPy (CPU) or CuPy (GPU);
    ``windows`` are the units decoded for it (``windows.decoded_frames``: frames the readers
    returned). On the GPU ``tensor`` is the PyTorch tensor that owns the batch's memory (``video``
    is a view of it)."""

    plans: list[SamplePlan]
    video: Any
    windows: BatchWindows | None = None
    tensor: Any = None


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
    mode: a :class:`~bsp_dali.plan.planner.ClipMode` or its name, ``"bsp"`` (synthesized boundaries) or
        ``"action"`` (plain clips, action labels).
    epoch_size: samples per epoch over all ranks (default: the number of videos).
    device: ``"auto"``, ``"cpu"`` or ``"gpu"``; decoder: a :class:`~bsp_dali.decode.stage.Decoder` or its
        name, ``"auto"``, ``"dali"`` or ``"pyav"`` (CPU); ``self.decoder`` is the one in use.
    dtype, layout, mean, std: output format (see ``bsp_dali.synth.synthesis``).
    shard: ``(rank, world_size)``; default from ``torch.distributed`` when initialised.
    share: samples per group that share their videos, start frames and crops (decode once, use
        ``share`` times; 1, the default, draws every sample independently; see docs/method.md).
    dali_reader, pipelines, decode_ahead: the DALI reader (``auto``, ``legacy``, ``experimental``,
        ``decoder``), pipelines at once (default: one per NVDEC engine on the GPU) and batches
        planned per pipeline chunk (see ``bsp_dali.decode.stage``).
    cpu_workers: how PyAV decodes on the CPU: ``"processes"`` (default: ``num_threads`` worker
        processes, one per core by default, handing frames back in shared memory) or ``"threads"``
        (a thread pool in this process).
    """

    def __init__(self, data: DatasetIndex | str, batch_size: int, *, synthesis: SynthesisConfig | None = None,
                 spatial: SpatialConfig | None = None, mode: ClipMode | str = ClipMode.BSP, seed: int = 0,
                 epoch_size: int | None = None, device: str = "auto", decoder: Decoder | str = Decoder.AUTO,
                 dtype: OutDType | str = OutDType.FLOAT32, layout: Layout | str = Layout.NCTHW,
                 mean: Any = None, std: Any = None, last_batch_policy: LastBatchPolicy | str = LastBatchPolicy.DROP,
                 shard: tuple[int, int] | None = None, return_recipes: bool = False, num_threads: int | None = None,
                 prefetch: int = 2, device_id: int | None = None, max_bad_videos: int = MAX_BAD_VIDEOS,
                 reader: FrameReader | None = None, share: int = 1, dali_reader: str = "auto",
                 pipelines: int | None = None, decode_ahead: int | None = None, cpu_workers: str = "processes"):
        if isinstance(data, DatasetIndex):
            index = data
        else:
            from .data.ingest import load_data

            index = load_data(data)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size ({batch_size!r}) must be a positive integer")
        self.index = index
        self.batch_size = batch_size
        self.mode = ClipMode.parse(mode)
        self.synthesis = synthesis or SynthesisConfig()
        self.spatial = spatial or SpatialConfig()
        self.planner = Planner(index, self.synthesis, seed=seed, spatial=self.spatial, share=share)
        self.seed = seed
        self.share = self.planner.share
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
        self.prefetch = max(1, int(prefetch))
        self.device = resolve_device(device)
        self.device_id = self._pick_device_id(device_id)
        self.stage = DecodeStage(index, self.planner, StageOptions(
            size=self.spatial.size, device=self.device, decoder=decoder, dali_reader=dali_reader,
            num_threads=num_threads, device_id=self.device_id, pipelines=pipelines, ahead=decode_ahead,
            max_bad_videos=int(max_bad_videos), cpu_workers=cpu_workers), mode=self.mode, reader=reader)
        self.decoder = self.stage.decoder
        self.num_threads = self.stage.threads
        self.max_bad_videos = self.stage.max_bad_videos
        self.epoch = 0
        self.position = 0  # next batch of the current epoch
        self._worker: _Prefetcher | None = None
        self._gpu: Any = None  # GPUSynthesis, made at the first GPU batch
        if len(self) == 0:
            raise ValueError(f"an epoch of {self.epoch_size} samples over {self.world} shard(s) gives no batch of "
                             f"{batch_size} with last_batch_policy={self.policy.value}; lower batch_size or use 'partial'")

    # ------------------------------------------------------------------ set-up
    def _pick_device_id(self, device_id: int | None) -> int:
        """The GPU: ``device_id``, else PyTorch's current device (``torch.cuda.set_device``, what a
        model's ``.cuda()`` uses), so one GPU per rank through ``CUDA_VISIBLE_DEVICES`` works."""
        if device_id is not None or self.device == "cpu":
            return int(device_id or 0)
        return current_cuda_device()

    @property
    def decoder_description(self) -> str:
        """Which decoder reads which files, in words (for logs and the CLI)."""
        return self.stage.description

    @property
    def depth(self) -> int:
        """Batches the iterator can hold ready before the consumer asks: the prefetch queue plus
        what the decode stage keeps in flight, and on the CPU the synthesis thread's batch and
        queue (what a benchmark's warm-up must drain)."""
        synthesis = 1 + SYNTHESIZED_AHEAD if self.device != "gpu" else 0
        return self.prefetch + self.stage.batches_ahead + synthesis

    @property
    def banned(self) -> dict[int, str]:
        """Video position -> reason, for the files excluded so far."""
        return self.stage.banned

    @property
    def failures(self) -> list[tuple[str, str]]:
        return self.stage.failures

    # ------------------------------------------------------------------ epoch bookkeeping
    def _owned(self, rank: int) -> int:
        """Samples of the epoch that belong to ``rank``: ranks take whole groups of ``share``
        samples in turn (groups ``rank, rank + world, ...``), so a group's shared windows stay on
        one rank; with ``share=1`` these are the samples ``rank, rank + world, ...``."""
        E, W, k = self.epoch_size, self.world, self.share
        groups, rem = divmod(E, k)
        n = max(0, (groups - rank + W - 1) // W) * k
        if rem and groups % W == rank:
            n += rem
        return n

    def _shard_count(self) -> int:
        """Samples of this shard per epoch. DROP and FILL give every rank the same count (and so the
        same number of batches, as DDP needs); PARTIAL gives each rank exactly its own samples."""
        if self.policy is LastBatchPolicy.DROP:
            return min(self._owned(r) for r in range(self.world))
        if self.policy is LastBatchPolicy.FILL:
            return max(self._owned(r) for r in range(self.world))
        return self._owned(self.rank)

    def __len__(self) -> int:
        n, B = self._shard_count(), self.batch_size
        return n // B if self.policy is LastBatchPolicy.DROP else -(-n // B)

    def batch_indices(self, batch: int) -> list[int]:
        """Sample indices of this shard's ``batch``-th batch of an epoch."""
        return self._batch_order()(batch)

    def _batch_order(self) -> "_BatchOrder":
        return _BatchOrder(self._shard_count(), self._owned(self.rank), self.batch_size, self.share, self.rank,
                           self.world, self.policy is LastBatchPolicy.FILL)

    def plan(self, sample_index: int, epoch: int) -> SamplePlan:
        """The plan of a sample, replaced deterministically if it used a banned video."""
        return self.stage.plan(sample_index, epoch)

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
                "rank": self.rank, "world": self.world, "batch_size": self.batch_size, "mode": self.mode.value,
                "share": self.share, "banned": {self.index.videos[v].path: r for v, r in sorted(self.banned.items())}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"iterator state version {state.get('version')!r} is not supported")
        for key in ("seed", "batch_size", "mode"):
            if state[key] != getattr(self, key):
                raise ValueError(f"iterator state was saved with {key}={state[key]!r}, this iterator has "
                                 f"{getattr(self, key)!r}: the samples would differ")
        if state.get("share", 1) != self.share:
            raise ValueError(f"iterator state was saved with share={state.get('share', 1)!r}, this iterator has "
                             f"{self.share!r}: the samples would differ")
        self._stop_worker()
        by_path = {v.path: i for i, v in enumerate(self.index.videos)}
        self.stage.banned.clear()
        self.stage.banned.update({by_path[p]: r for p, r in state.get("banned", {}).items() if p in by_path})
        self.epoch, self.position = int(state["epoch"]), int(state["batch"])

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
        raw = item if isinstance(item, RawBatch) else self._finish(item)
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
        if self._gpu is not None:
            self._gpu.close()
        self.stage.close()

    def __enter__(self) -> "BSPIterator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()  # an iterator dropped mid-epoch stops its threads and decode workers
        except Exception:  # noqa: BLE001
            pass

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    # ------------------------------------------------------------------ the work of one batch
    def _finish(self, decoded: DecodedBatch) -> RawBatch:
        """The synthesis of one batch (the fused kernel on the GPU, NumPy on the CPU), here: on the
        CPU the prefetcher's synthesis thread runs it instead (``_cpu_synthesis``)."""
        if self.device != "gpu":
            return _cpu_synthesis(self.mean, self.std, self.dtype, self.layout)(decoded)
        if self._gpu is None:
            from .synth.torch_interop import GPUSynthesis

            self._gpu = GPUSynthesis(self.device_id, mean=self.mean, std=self.std, dtype=self.dtype,
                                     layout=self.layout)
        # the batch in a tensor from PyTorch's allocator, written on PyTorch's current stream
        tensor, video = self._gpu(decoded.stacks, RecipeTables.from_windows(decoded.plans, decoded.windows))
        decoded.release()  # the uploads are done: host stacks may go back to their ring
        return RawBatch(decoded.plans, video, decoded.windows, tensor)

    def render(self, plans: Sequence[SamplePlan]) -> RawBatch:
        """Decode and synthesize given plans (not drawn by this iterator: ``extract`` and
        ``inspect`` build their own). A file that fails raises :class:`BadVideo`."""
        return self._finish(self.stage.render(list(plans)))

    # ------------------------------------------------------------------ PyTorch
    def to_torch(self, raw: RawBatch) -> dict[str, Any]:
        import torch

        plans = raw.plans
        video = raw.tensor if raw.tensor is not None else torch_view(raw.video, self.dtype)
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


def _cpu_synthesis(mean: Any, std: Any, dtype: OutDType, layout: Layout) -> Callable[[DecodedBatch], RawBatch]:
    """The CPU synthesis of a decoded batch, as a function that holds no reference to the iterator
    (the synthesis thread runs it). The batch's stacks are released as soon as they are used."""

    def finish(decoded: DecodedBatch) -> RawBatch:
        tables = RecipeTables.from_windows(decoded.plans, decoded.windows)
        video = synthesize(decoded.stacks, tables, mean=mean, std=std, dtype=dtype, layout=layout)
        decoded.release()
        return RawBatch(decoded.plans, video, decoded.windows)

    return finish


@dataclass(frozen=True)
class _BatchOrder:
    """The sample indices of a shard's batches, computed on demand from the epoch's numbers (no
    reference to the iterator, so a prefetch thread holding it never keeps the iterator alive)."""

    count: int  # samples of this shard per epoch
    own: int  # this rank's real samples (FILL completes the last batch from them)
    batch_size: int
    share: int
    rank: int
    world: int
    fill: bool

    def __call__(self, batch: int) -> list[int]:
        B, k = self.batch_size, self.share
        local = list(range(batch * B, min((batch + 1) * B, self.count)))
        if self.fill:
            local += list(range(B - len(local)))  # complete the last batch from the shard's start
            local = [j % self.own for j in local]
        return [(self.rank + (j // k) * self.world) * k + j % k for j in local]


class _Prefetcher:
    """Runs the decode stage for one epoch, from a start position, in a background thread, up to
    ``prefetch`` decoded batches ahead of the consumer. On the CPU a second thread synthesizes the
    decoded batches (NumPy releases the GIL in its loops), so the synthesis of batch i+1 overlaps
    the training step of batch i; the consumer gets finished :class:`RawBatch` es. On the GPU the
    consumer's thread launches the kernel (its CUDA stream)."""

    def __init__(self, it: BSPIterator, epoch: int, start: int):
        self.q: queue.Queue = queue.Queue(maxsize=it.prefetch)
        self._stop = threading.Event()
        batches = map(it._batch_order(), range(start, len(it)))  # lazily: an epoch may hold millions
        # a weak reference: an iterator dropped mid-epoch is collected, and its __del__ stops us
        self.thread = threading.Thread(target=self._run, args=(weakref.ref(it.stage), epoch, batches), daemon=True,
                                       name="bsp-prefetch")
        self.synth: threading.Thread | None = None
        self.out = self.q
        if it.device != "gpu":
            self.out = queue.Queue(maxsize=SYNTHESIZED_AHEAD)
            self.synth = threading.Thread(target=self._synthesize,
                                          args=(_cpu_synthesis(it.mean, it.std, it.dtype, it.layout),),
                                          daemon=True, name="bsp-synthesis")
        self.thread.start()
        if self.synth is not None:
            self.synth.start()

    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, ref: "weakref.ref[DecodeStage]", epoch: int, batches: Iterator[list[int]]) -> None:
        stream = None
        try:
            stage = ref()
            if stage is None:
                return
            stream = stage.stream(epoch, batches)
            del stage
            for item in stream:
                ok = self._put(self.q, ("ok", item))
                del item
                if not ok or self._stop.is_set():
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(self.q, ("error", e))
        finally:
            if stream is not None:
                stream.close()

    def _synthesize(self, finish: Callable[[DecodedBatch], RawBatch]) -> None:
        try:
            while not self._stop.is_set():
                try:
                    status, item = self.q.get(timeout=0.1)
                except queue.Empty:
                    if not self.thread.is_alive() and self.q.empty():
                        return  # the consumer sees that no batch comes
                    continue
                if status == "ok":
                    item = finish(item)
                ok = self._put(self.out, (status, item))
                del item
                if not ok or status == "error":
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(self.out, ("error", e))

    def get(self) -> Any:
        last = self.synth or self.thread
        while True:
            try:
                status, item = self.out.get(timeout=1.0)
            except queue.Empty:
                if not last.is_alive() and self.out.empty():
                    raise RuntimeError("the prefetch thread stopped without a batch") from None
                continue
            if status == "error":
                raise item
            return item

    def stop(self) -> None:
        self._stop.set()
        threads = [t for t in (self.thread, self.synth) if t is not None and t is not threading.current_thread()]
        while True:  # unblock producers waiting on a full queue; drop the batches (and their shared memory)
            for q in {id(self.q): self.q, id(self.out): self.out}.values():
                while True:
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        break
            if not any(t.is_alive() for t in threads):
                break
            for t in threads:
                t.join(timeout=0.05)  # never two prefetchers at once: they share the stage's readers
