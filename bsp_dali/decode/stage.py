"""The decode stage: from sample indices to plans and decoded windows, with its failure policy.

    stage = DecodeStage(index, planner, StageOptions(size=(224, 224), device="gpu"))
    for batch in stage.stream(epoch, [[0, 1, 2, 3], [4, 5, 6, 7]]):   # in order
        batch.plans, batch.windows, batch.stacks   # the kernel's tables: RecipeTables.from_windows

What it owns:

* **Planning** (``plan``): the planner's draw for a sample, or its replacement draw when the
  sample used a banned video. ``plan_windows`` turns a batch's plans into decode units.
* **Routing** (``route``): which reader decodes which unit. The procedural demo videos: the demo
  reader. ``decoder="pyav"``: PyAV (CPU), in worker processes (``cpu_workers``, see
  ``bsp_dali.decode.procreader``) that get the next batch's units ahead. ``decoder="dali"``: on the GPU every file goes to a
  DALI file-list reader (``fn.readers.video``, "legacy", by default) in windows of the fixed
  length ``L`` (``fixed_window_length``); on the CPU VP8/VP9/MJPEG go to
  ``fn.experimental.readers.video`` on the CPU and everything else (H.264) to PyAV. Units that
  cannot have the fixed length (videos shorter than ``L``) go to ``fn.decoders.video`` on the same
  device (it takes any window): a stated policy, so no video is excluded for its length.
* **Planning ahead** (``stream``): with file-list readers, the stage plans ``ahead`` batches at a
  time (a chunk), gives each chunk's units to one of ``pipelines`` DALI pipelines (one per NVDEC
  engine on the GPU), and keeps that many chunks in flight while earlier batches are synthesized.
* **Failures**: a file that fails after indexing is banned by name (``failures``); the samples
  that used it are replanned with the planner's replacement draws and the missing units decoded;
  units already decoded are reused. More than ``max_bad_videos`` bans raise
  :class:`DecodeFailures` naming every file. A wrong or missing window is an error, never a frame
  of zeros.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from ..data.demo import DEMO_SCHEME
from ..data.index import BadVideo, DatasetIndex
from ..gpu import GPUUnavailableError, dali_available
from ..plan.config import ChoiceEnum, NamedChoice
from ..plan.planner import ClipMode, Planner, SamplePlan
from .dali_readers import DaliFileListReader, DaliFramesReader, DaliReaderKind
from .pipeline import DALI_CPU_CODECS
from .pyav import FrameReader, PyAVReader, default_threads, select_reader
from .readers import CPUWindowReader, Result, WindowReader
from .windows import BatchWindows, DecodeUnit, fixed_window_length, plan_windows

log = logging.getLogger(__name__)

MAX_BAD_VIDEOS = 32  # files that may fail in the pipeline before the run stops (tests lower it)
CPU_CHUNKS_IN_FLIGHT = 2  # chunks handed to the CPU worker processes at once: the one in use and the next




class DecodeFailures(RuntimeError):
    """Too many videos failed in the pipeline; ``failures`` lists (path, reason)."""

    def __init__(self, failures: Sequence[tuple[str, str]]):
        lines = "\n".join(f"  {p}: {r}" for p, r in failures)
        super().__init__(f"{len(failures)} videos failed to decode in the pipeline (more than allowed):\n{lines}")
        self.failures = list(failures)


@dataclass
class DecodedBatch:
    """Plans of a batch, its units (``windows``) and one decoded stack per unit (FHWC uint8 of the
    output size; NumPy, or CuPy from a GPU reader), ready for the synthesis kernel."""

    plans: list[SamplePlan]
    windows: BatchWindows
    stacks: list[Any]

    def release(self) -> None:
        """Drop the batch's references to its stacks, once they are synthesized. Stacks of the worker
        processes are views into shared memory whose blocks return to the ring when the last
        reference to them dies (``bsp_dali.decode.procreader``): releasing right after the synthesis
        returns them at once. Plans and windows stay."""
        self.stacks = []


class Decoder(NamedChoice):
    """Which decoder reads the files. Asked for: ``auto`` (DALI when installed, else PyAV), ``dali``
    or ``pyav`` (on the CPU DALI reads VP8/VP9/MJPEG and PyAV the rest). ``demo`` is what the
    procedural demo videos get, whatever was asked: a stage's decoder, never a choice."""

    AUTO = "auto"
    DALI = "dali"
    PYAV = "pyav"
    DEMO = "demo"

    @classmethod
    def choices(cls) -> list["Decoder"]:
        return [cls.AUTO, cls.DALI, cls.PYAV]

    @classmethod
    def what(cls) -> str:
        return "decoder"


@dataclass(frozen=True)
class StageOptions:
    """How the stage decodes. ``decoder``: a :class:`Decoder` or its name, ``auto`` (DALI when
    installed, else PyAV), ``dali`` or ``pyav``; ``dali_reader``: ``auto`` (legacy on the GPU, experimental on the CPU),
    ``legacy``, ``experimental`` or ``decoder`` (``fn.decoders.video`` per source, the old path);
    ``pipelines``: file-list pipelines at once (default: NVDEC engines on the GPU, 1 on the CPU);
    ``ahead``: batches planned per chunk of a file-list pipeline (default 2 on the GPU, 1 on the
    CPU). The fixed window length follows the planner (its config and ``share``).
    ``cpu_workers``: how the CPU route (PyAV) decodes: ``processes`` (default: ``num_threads``
    worker processes, one per core by default, writing into shared memory; see
    ``bsp_dali.decode.procreader``) or ``threads`` (a thread pool in this process). ``skip_nonref``: skip
    unreferenced frames before each window (exact; see ``bsp_dali.decode.pyav.decode_window``)."""

    size: tuple[int, int]
    device: str = "cpu"
    decoder: Decoder | str = Decoder.AUTO
    dali_reader: str = "auto"
    num_threads: int | None = None
    device_id: int = 0
    pipelines: int | None = None
    ahead: int | None = None
    max_bad_videos: int = MAX_BAD_VIDEOS
    cpu_workers: str = "processes"
    skip_nonref: bool = True


class CPUWorkers(ChoiceEnum):
    """Where the CPU route decodes: worker processes (shared memory) or threads of this process."""

    PROCESSES = "processes"
    THREADS = "threads"

    @classmethod
    def what(cls) -> str:
        return "cpu_workers"


class DecodeStage:
    """See the module docstring. ``mode``: a :class:`~bsp_dali.plan.planner.ClipMode` or its name,
    ``"bsp"`` (synthesized plans) or ``"action"`` (plain clips);
    ``reader`` replaces the CPU frame reader (tests pass stand-ins); ``cpu_reader`` replaces the
    whole CPU route (any :class:`~bsp_dali.decode.readers.WindowReader`, e.g. worker processes writing
    into shared memory)."""

    def __init__(self, index: DatasetIndex, planner: Planner, options: StageOptions,
                 mode: ClipMode | str = ClipMode.BSP, reader: FrameReader | None = None,
                 cpu_reader: WindowReader | None = None):
        if options.device not in ("cpu", "gpu"):
            raise ValueError(f"device ({options.device!r}) must be 'cpu' or 'gpu'")
        self.index, self.planner, self.options, self.mode = index, planner, options, ClipMode.parse(mode)
        self.device = options.device
        self.size = (int(options.size[0]), int(options.size[1]))
        self.threads = int(options.num_threads or default_threads())
        self.max_bad_videos = int(options.max_bad_videos)
        self.banned: dict[int, str] = {}  # video position -> reason
        self.decoder = self._pick_decoder(options.decoder)
        self.dali_reader = self._pick_dali_reader(options.dali_reader)
        self.length = fixed_window_length(planner.config, planner.share)
        if options.ahead is not None and options.ahead < 1:
            raise ValueError(f"ahead ({options.ahead}) must be >= 1")
        if options.pipelines is not None and options.pipelines < 1:
            raise ValueError(f"pipelines ({options.pipelines}) must be >= 1")
        self.ahead = int(options.ahead or (2 if self.device == "gpu" else 1))
        self.cpu_workers = CPUWorkers.parse(options.cpu_workers)
        if cpu_reader is None:
            if reader is None and self.decoder is not Decoder.DEMO and self.cpu_workers is CPUWorkers.PROCESSES:
                from .procreader import ProcessWindowReader, default_workers

                cpu_reader = ProcessWindowReader(index, self.size, options.num_threads or default_workers(),
                                                 skip_nonref=options.skip_nonref)
            else:
                if reader is None and self.decoder is not Decoder.DEMO:
                    reader = PyAVReader(index, skip_nonref=options.skip_nonref, rgb_threads=1)
                cpu_reader = CPUWindowReader(index, reader or select_reader(index), self.size, self.threads,
                                             "procedural demo frames" if self.decoder is Decoder.DEMO else
                                             f"PyAV (CPU) in {self.threads} thread{'s' if self.threads > 1 else ''}")
        self.cpu_reader: WindowReader = cpu_reader
        self._variable: DaliFramesReader | None = None
        self._fixed_sync: DaliFileListReader | None = None
        self._pool: Any = None
        self._pipelines = options.pipelines

    # ------------------------------------------------------------------ set-up
    def _pick_decoder(self, value: Decoder | str) -> Decoder:
        asked = Decoder.parse(value)
        if self.index.videos and self.index.videos[0].path.startswith(DEMO_SCHEME):
            return Decoder.DEMO
        if asked is Decoder.AUTO:  # without DALI, PyAV decodes on the CPU (and the GPU synthesizes)
            return Decoder.DALI if dali_available() else Decoder.PYAV
        if asked is Decoder.DALI and not dali_available():
            raise GPUUnavailableError("decoder='dali' was asked for but NVIDIA DALI is not installed")
        return asked

    def _pick_dali_reader(self, value: str) -> DaliReaderKind:
        if str(value).lower() == "auto":
            return DaliReaderKind.LEGACY if self.device == "gpu" else DaliReaderKind.EXPERIMENTAL
        kind = DaliReaderKind.parse(value)
        if kind is DaliReaderKind.LEGACY and self.device != "gpu" and self.decoder is Decoder.DALI:
            raise ValueError("dali_reader='legacy' (fn.readers.video) runs on the GPU only; use 'experimental' "
                             "or 'decoder' on the CPU")
        return kind

    @property
    def pipelines(self) -> int:
        if self._pipelines is None:
            if self.device == "gpu":
                from .nvdec import nvdec_engines

                self._pipelines = nvdec_engines(self.options.device_id)
            else:
                self._pipelines = 1
        return int(self._pipelines)

    @property
    def description(self) -> str:
        """Which decoder reads which files, in words (for logs and the CLI)."""
        if self.decoder in (Decoder.DEMO, Decoder.PYAV):
            return self.cpu_reader.description
        if self.dali_reader is DaliReaderKind.DECODER:
            what = "DALI fn.decoders.video per source"
        else:
            op = "fn.readers.video" if self.dali_reader is DaliReaderKind.LEGACY else "fn.experimental.readers.video"
            what = f"{op} in windows of {self.length} frames"
        if self.device == "gpu":
            return f"DALI NVDEC (GPU): {what}"
        return f"DALI CPU for VP8/VP9/MJPEG ({what}); the rest: {self.cpu_reader.description}"

    # ------------------------------------------------------------------ plans and bans
    def plan(self, sample_index: int, epoch: int) -> SamplePlan:
        """The plan of a sample, replaced deterministically if it used a banned video."""
        make = self.planner.plan if self.mode is ClipMode.BSP else self.planner.plan_action
        p = make(sample_index, epoch)
        if self.banned and any(s.video in self.banned for s in p.sources):
            p = make(sample_index, epoch, banned=frozenset(self.banned))
        return p

    def ban(self, video: int, reason: str) -> None:
        if video in self.banned:
            return
        path = self.index.resolve(self.index.videos[video].path)
        log.warning("excluding %s for the rest of the run: %s", path, reason)
        self.banned[video] = reason
        if len(self.banned) > self.max_bad_videos:
            raise DecodeFailures(self.failures)

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [(self.index.videos[v].path, r) for v, r in sorted(self.banned.items())]

    # ------------------------------------------------------------------ routing
    def _dali_decodes(self, video: int) -> bool:
        if self.decoder is not Decoder.DALI:
            return False
        return self.device == "gpu" or (self.index.videos[video].codec or "") in DALI_CPU_CODECS

    def fixed_for(self, video: int) -> bool:
        """Whether the video's units go to a fixed-length file-list reader (DALI's file lists are
        split on white space, so a path with a space goes to the per-source decoder instead)."""
        return (self._dali_decodes(video) and self.dali_reader is not DaliReaderKind.DECODER
                and not any(c.isspace() for c in self.index.resolve(self.index.videos[video].path)))

    def windows(self, plans: Sequence[SamplePlan]) -> BatchWindows:
        return plan_windows(plans, self.index.num_frames, self.length, self.fixed_for)

    def is_fixed(self, unit: DecodeUnit) -> bool:
        return (self.fixed_for(unit.video) and unit.length == self.length
                and unit.stop <= int(self.index.num_frames[unit.video]))

    def route(self, unit: DecodeUnit) -> str:
        """``"fixed"`` (DALI file-list reader), ``"variable"`` (``fn.decoders.video``) or ``"cpu"``."""
        if not self._dali_decodes(unit.video):
            return "cpu"
        return "fixed" if self.is_fixed(unit) else "variable"

    def _make_fixed(self) -> DaliFileListReader:
        threads = max(2, self.threads // max(1, self.pipelines))  # the pipelines share the cores
        return DaliFileListReader(self.index, self.dali_reader, self.device, self.length, self.size,
                                  num_threads=threads, device_id=self.options.device_id)

    def _reader_for(self, route: str) -> Any:
        if route == "cpu":
            return self.cpu_reader
        if route == "variable":
            if self._variable is None:
                self._variable = DaliFramesReader(self.index, self.device, self.size, self.threads,
                                                  self.options.device_id)
            return self._variable
        if self._fixed_sync is None:
            self._fixed_sync = self._make_fixed()
        return self._fixed_sync

    def read(self, units: Sequence[DecodeUnit]) -> list[Result]:
        """Decode units now, each through its route (results in the order given)."""
        out: list[Result] = [None] * len(units)
        by_route: dict[str, list[int]] = {}
        for k, u in enumerate(units):
            by_route.setdefault(self.route(u), []).append(k)
        for route, ks in by_route.items():
            reader = self._reader_for(route)
            if self.device == "gpu" and route != "cpu":
                import cupy as cp

                with cp.cuda.Device(self.options.device_id):  # copies land on the reader's device
                    results = reader.read_windows([units[k] for k in ks])
            else:
                results = reader.read_windows([units[k] for k in ks])
            for k, r in zip(ks, results):
                out[k] = r
        return out

    # ------------------------------------------------------------------ batches
    def _resolve(self, epoch: int, plans: list[SamplePlan], have: dict[DecodeUnit, Result],
                 replan: bool = True) -> DecodedBatch:
        """Decode what the plans still miss and apply the failure policy until the batch is whole."""
        while True:
            if replan and self.banned:
                plans = [self.plan(p.index, epoch) if any(s.video in self.banned for s in p.sources) else p
                         for p in plans]
            bw = self.windows(plans)
            missing = [u for u in bw.units if u not in have]
            if missing:
                for u, r in zip(missing, self.read(missing)):
                    have[u] = r
            bad: dict[int, BadVideo] = {}
            for u in bw.units:
                if isinstance(have[u], BadVideo):
                    bad.setdefault(u.video, have[u])
            if not bad:
                return DecodedBatch(plans, bw, [have[u] for u in bw.units])
            if not replan:
                raise next(iter(bad.values()))
            for v, err in bad.items():
                self.ban(v, err.reason)

    def decode(self, epoch: int, ids: Sequence[int]) -> DecodedBatch:
        """Plan and decode one batch now."""
        return self._resolve(epoch, [self.plan(i, epoch) for i in ids], {})

    def render(self, plans: Sequence[SamplePlan]) -> DecodedBatch:
        """Decode given plans (not drawn here: ``extract`` and ``inspect`` build their own); a file
        that fails raises its :class:`BadVideo`, nothing is replanned."""
        return self._resolve(0, list(plans), {}, replan=False)

    def stream(self, epoch: int, batches: Iterable[Sequence[int]]) -> Iterator[DecodedBatch]:
        """The decoded batches of ``batches`` (lists of sample indices), in order. With a file-list
        reader, chunks of ``ahead`` batches are planned ahead and decoded by ``pipelines`` pipelines
        at once; a CPU reader that takes requests ahead (the worker processes) gets the next batch's
        units while this one is used; otherwise each batch is decoded when it is asked for."""
        fixed, cpu_ahead = self._streams_ahead()
        if not fixed and not cpu_ahead:
            for ids in batches:
                yield self.decode(epoch, ids)
            return
        yield from self._stream_chunks(epoch, iter(batches), fixed, cpu_ahead)

    def _streams_ahead(self) -> tuple[bool, bool]:
        """(file-list pipelines, a CPU reader that takes units ahead and gets some)."""
        fixed = self.decoder is Decoder.DALI and self.dali_reader is not DaliReaderKind.DECODER
        cpu_ahead = hasattr(self.cpu_reader, "submit") and (
            self.decoder is Decoder.PYAV or (self.decoder is Decoder.DALI and self.device == "cpu" and any(
                (v.codec or "") not in DALI_CPU_CODECS for v in self.index.videos)))
        return fixed, cpu_ahead

    @property
    def batches_ahead(self) -> int:
        """Batches ``stream`` may hold decoded or in flight beyond the one being consumed: a chunk
        of ``ahead`` batches in each of the ``pipelines`` file-list pipelines (at least
        ``CPU_CHUNKS_IN_FLIGHT`` with the CPU's worker processes), or none when each batch is
        decoded on demand. A benchmark's warm-up must drain these too."""
        fixed, cpu_ahead = self._streams_ahead()
        if not fixed and not cpu_ahead:
            return 0
        return self._chunks_in_flight(fixed, cpu_ahead) * self.ahead

    def _chunks_in_flight(self, fixed: bool, cpu_ahead: bool) -> int:
        """Chunks ``stream`` keeps submitted: one per file-list pipeline, at least
        ``CPU_CHUNKS_IN_FLIGHT`` with the CPU's worker processes."""
        return max(self.pipelines if fixed else 1, CPU_CHUNKS_IN_FLIGHT if cpu_ahead else 1)

    def _pool_of_readers(self) -> Any:
        if self._pool is None:
            from .nvdec import ReaderPool

            self._pool = ReaderPool(self._make_fixed, self.pipelines, self.device, self.options.device_id)
        return self._pool

    def _stream_chunks(self, epoch: int, batches: Iterator[Sequence[int]], fixed: bool = True,
                       cpu_ahead: bool = False) -> Iterator[DecodedBatch]:
        """Chunks of ``ahead`` batches, taken from ``batches`` as they are needed (an epoch's batch
        list is never built: it may hold millions)."""
        depth = self._chunks_in_flight(fixed, cpu_ahead)
        pending: deque = deque()

        def submit() -> bool:
            chunk = list(itertools.islice(batches, self.ahead))
            if not chunk:
                return False
            plans = [[self.plan(i, epoch) for i in ids] for ids in chunk]
            units = list(dict.fromkeys(u for ps in plans for u in self.windows(ps).units))
            requests = []
            fixed_units = [u for u in units if self.is_fixed(u)] if fixed else []
            if fixed_units:
                requests.append((fixed_units, self._pool_of_readers().submit(fixed_units)))
            cpu_units = [u for u in units if self.route(u) == "cpu"] if cpu_ahead else []
            if cpu_units:
                requests.append((cpu_units, self.cpu_reader.submit(cpu_units)))  # type: ignore[attr-defined]
            pending.append((plans, requests))
            return True

        try:
            more = True
            while more and len(pending) < depth:
                more = submit()
            while pending:
                plans_per_batch, requests = pending.popleft()
                if more:
                    more = submit()  # keep every pipeline (and worker) busy while this chunk is used
                have: dict[DecodeUnit, Result] = {}
                for units, future in requests:
                    have.update(zip(units, future.result()))
                del requests
                for plans in plans_per_batch:
                    yield self._resolve(epoch, plans, have)
                have.clear()
        finally:
            for _, requests in pending:
                for _, future in requests:
                    future.cancel()
            for _, requests in pending:
                for _, future in requests:
                    if not future.cancelled():
                        try:
                            future.result()
                        except Exception:  # noqa: BLE001 - the stream is being abandoned
                            pass

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        for r in (self.cpu_reader, self._variable, self._fixed_sync):
            if r is not None:
                r.close()
        self._variable = self._fixed_sync = None


__all__ = ["CPUWorkers", "DALI_CPU_CODECS", "DecodeFailures", "DecodeStage", "DecodedBatch", "Decoder",
           "MAX_BAD_VIDEOS", "StageOptions"]
