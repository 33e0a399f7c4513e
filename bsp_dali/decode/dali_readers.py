"""DALI window readers: file lists of planned windows, and the per-source decoder for the rest.

:class:`DaliFileListReader` decodes fixed-length units (``bsp_dali.decode.windows``) with one of DALI's
video readers, given a ``file_list`` of the planned windows in planned order, one line per unit::

    /abs/path/video.mp4 <line number> <start> <start + L>

with ``sequence_length = L``, no shuffle and no sharding inside DALI (the planner decides
everything), so DALI yields exactly one sequence per line, in list order. The crop box and flip of
each line are fed by ``fn.external_source`` in the same order to ``fn.resize`` and ``fn.flip``
(per-sample arguments). The line number travels as the label and the reader's frame numbers come
back too: every output is checked against the line it must be (DALI skips files it cannot open
and lines shorter than ``L`` without an error, which would shift every later window), so a wrong
or missing window is never handed on silently.

Kinds (:class:`DaliReaderKind`):

* ``legacy``: ``fn.readers.video`` (GPU only): one NVDEC decoder per pipeline, reused across files
  (reconfigured when the coded size changes); opens every listed file when the pipeline is built.
  Measured in ``../shared/GPU-FINDINGS.md`` to scale with pipelines: the GPU default.
* ``experimental``: ``fn.experimental.readers.video`` (CPU for VP8/VP9/MJPEG, or GPU): builds a
  frame index of every listed file at start-up; on the CPU it is how this whole path is tested.
* ``decoder``: not a file-list reader: ``fn.decoders.video`` per source with a frame list
  (:class:`DaliFramesReader`, the previous GPU path). It takes windows of any length, so the stage
  routes it the units that do not fit ``L`` (videos shorter than ``L``).

A pipeline is built per call of ``read_windows`` (a chunk of units: the stage plans ahead and
gives each pipeline the units of a few batches). When a chunk fails, the culprit files are found by
bisection over the files of the chunk (good halves keep their results), and their units come back
as :class:`~bsp_dali.decode.pyav.BadVideo`.

DALI is imported lazily, inside the methods.
"""

from __future__ import annotations

import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from ..data.index import BadVideo, DatasetIndex
from ..plan.config import ChoiceEnum
from .pyav import read_bytes
from .readers import Result, check_stack, unit_error
from .windows import DecodeUnit

log = logging.getLogger(__name__)

MAX_PIPELINE_BATCH = 32  # sequences per run of a file-list pipeline (a chunk takes several runs)


class DaliReaderKind(ChoiceEnum):
    """Which DALI operator decodes the windows."""

    LEGACY = "legacy"  # fn.readers.video, GPU only
    EXPERIMENTAL = "experimental"  # fn.experimental.readers.video, CPU (VP8/VP9/MJPEG) or GPU
    DECODER = "decoder"  # fn.decoders.video per source (any window length)

    @classmethod
    def what(cls) -> str:
        return "dali_reader"


class _ChunkFailed(Exception):
    """A file-list pipeline failed on a chunk (build, run, or an output that is not its line)."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ", "Current pipeline", "C++ context")):
            return line[:300]
    return type(e).__name__


def _host(x: Any) -> Any:
    """A DALI TensorList on the host (labels and frame numbers of a GPU reader live on the GPU)."""
    return x.as_cpu() if hasattr(x, "as_cpu") else x


def _copies_done(device: str) -> None:
    """Wait for the copies out of DALI's output buffers: on the GPU they run asynchronously on the
    current CuPy stream, while DALI (its classic executor) reuses or frees those buffers on its own
    stream at the next ``run()`` or when the pipeline goes."""
    if device == "gpu":
        import cupy as cp

        cp.cuda.get_current_stream().synchronize()


def pipeline_batch(n: int, max_batch: int = MAX_PIPELINE_BATCH) -> int:
    """The pipeline batch size for ``n`` sequences: at most ``max_batch``, with the fewest padding
    lines (a reader's batch size is fixed, so the list is padded to a multiple of it)."""
    if n < 1:
        raise ValueError(f"n ({n}) must be >= 1")
    runs = -(-n // max_batch)
    return -(-n // runs)


def reader_arguments(kind: DaliReaderKind, device: str, list_path: str, length: int) -> dict[str, Any]:
    """The arguments of the reader operator: windows of ``length`` frames, one per list line, in
    list order (no shuffle), with the frame numbers of every output frame."""
    common = dict(device=device, file_list=list_path, sequence_length=length, random_shuffle=False,
                  enable_frame_num="sequence", name="reader")
    if kind is DaliReaderKind.LEGACY:  # fn.readers.video: end frame exclusive with frame numbers
        return dict(common, file_list_frame_num=True, pad_sequences=False, skip_vfr_check=True)
    return dict(common, file_list_format="frames", file_list_include_end=False, pad_mode="none")


# DALI's schema names of the two readers (the tests check every argument above against them)
READER_SCHEMAS = {DaliReaderKind.LEGACY: "readers__Video", DaliReaderKind.EXPERIMENTAL: "experimental__readers__Video"}


def file_list_lines(index: DatasetIndex, units: Sequence[DecodeUnit], length: int, batch: int) -> list[str]:
    """The ``file_list`` of a chunk: one ``path label start stop`` line per unit in order (the label
    is the line number), padded with copies of the last unit to a multiple of ``batch``."""
    lines = []
    padded = list(units) + [units[-1]] * (-len(units) % batch)
    for k, u in enumerate(padded):
        if u.length != length:
            raise ValueError(f"unit {u} does not have the reader's length {length}")
        path = os.path.abspath(index.resolve(index.videos[u.video].path))
        if any(c.isspace() for c in path):  # DALI splits list lines on white space
            raise ValueError(f"{path}: a path with white space cannot go into a DALI file list")
        lines.append(f"{path} {k} {u.start} {u.stop}")
    return lines


class DaliFileListReader:
    """Fixed-length units through a DALI file-list reader; see the module docstring. ``device`` is
    ``"cpu"`` or ``"gpu"``; results are NumPy (cpu) or CuPy (gpu) arrays owned by the caller."""

    def __init__(self, index: DatasetIndex, kind: DaliReaderKind | str, device: str, length: int,
                 size: tuple[int, int], num_threads: int = 2, device_id: int = 0,
                 max_batch: int = MAX_PIPELINE_BATCH):
        self.kind = DaliReaderKind.parse(kind)
        if self.kind is DaliReaderKind.DECODER:
            raise ValueError("the 'decoder' kind is DaliFramesReader, not a file-list reader")
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device ({device!r}) must be 'cpu' or 'gpu'")
        if self.kind is DaliReaderKind.LEGACY and device != "gpu":
            raise ValueError("DALI's legacy fn.readers.video runs on the GPU only; use kind='experimental' on the CPU")
        if length < 1:
            raise ValueError(f"length ({length}) must be >= 1")
        self.index, self.device, self.length = index, device, int(length)
        self.size = (int(size[0]), int(size[1]))
        self.num_threads, self.device_id, self.max_batch = int(num_threads), int(device_id), int(max_batch)
        op = "fn.readers.video" if self.kind is DaliReaderKind.LEGACY else "fn.experimental.readers.video"
        self.description = f"DALI {op} ({device}, windows of {self.length} frames)"
        self.builds = 0  # pipelines built (tests and the probe read it)

    # ------------------------------------------------------------------ the pipeline of one chunk
    def _build(self, list_path: str, batch: int) -> Any:
        from ..gpu import import_dali

        dali = import_dali()
        from nvidia.dali import fn, types

        kind, device, L, size = self.kind, self.device, self.length, self.size

        args = reader_arguments(kind, device, list_path, L)
        reader = fn.readers.video if kind is DaliReaderKind.LEGACY else fn.experimental.readers.video

        @dali.pipeline_def
        def windows_pipe():  # pragma: no cover - traced by DALI
            video, label, fnum = reader(**args)
            roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
            roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
            flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
            video = fn.resize(video, size=list(size), roi_start=roi_start, roi_end=roi_end, roi_relative=True,
                              antialias=True, interp_type=types.INTERP_LINEAR)
            return fn.flip(video, horizontal=flip), label, fnum

        pipe = windows_pipe(batch_size=batch, num_threads=self.num_threads,
                            device_id=self.device_id if device == "gpu" else None,
                            prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        pipe.build()
        self.builds += 1
        return pipe

    def _run_chunk(self, units: Sequence[DecodeUnit]) -> list[Any]:
        """Decode the units in order, or raise _ChunkFailed."""
        batch = pipeline_batch(len(units), self.max_batch)
        lines = file_list_lines(self.index, units, self.length, batch)
        fd, list_path = tempfile.mkstemp(prefix="bsp-windows-", suffix=".txt")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write("\n".join(lines) + "\n")
            pipe = None
            try:
                pipe = self._build(list_path, batch)
                size = pipe.epoch_size("reader")
            except Exception as e:  # noqa: BLE001 - DALI reports bad files as RuntimeError
                raise _ChunkFailed(_first_line(e)) from None
            if size != len(lines):
                raise _ChunkFailed(f"the reader found {size} of {len(lines)} windows (a file could not be opened, "
                                   "or is shorter than indexed)")
            padded = list(units) + [units[-1]] * (len(lines) - len(units))
            out: list[Any] = []
            for r in range(len(lines) // batch):
                todo = padded[r * batch:(r + 1) * batch]
                pipe.feed_input("roi_start", [np.array(u.crop[:2], np.float32) for u in todo])
                pipe.feed_input("roi_end", [np.array(u.crop[2:], np.float32) for u in todo])
                pipe.feed_input("flip", [np.array(int(u.flip), np.int32) for u in todo])
                try:
                    video, label, fnum = pipe.run()
                except Exception as e:  # noqa: BLE001
                    raise _ChunkFailed(_first_line(e)) from None
                label, fnum = _host(label), _host(fnum)
                for i, u in enumerate(todo):
                    line = r * batch + i
                    got_label = int(np.asarray(label[i]).reshape(-1)[0])
                    got_frames = np.asarray(fnum[i]).reshape(-1).tolist()
                    if got_label != line or got_frames != list(u.frames):
                        raise _ChunkFailed(f"window {line} came back as line {got_label}, frames "
                                           f"{got_frames[:1]}..{got_frames[-1:]} instead of {u.start}..{u.stop - 1}")
                    if line < len(units):
                        out.append(self._own(video, i))
                _copies_done(self.device)  # before the next run() overwrites the buffers copied from
            return out
        finally:
            pipe = None  # not kept alive by a _ChunkFailed's traceback through the bisection
            os.unlink(list_path)

    def _own(self, video: Any, i: int) -> Any:
        """A copy of output ``i`` that outlives the pipeline's buffers."""
        if self.device == "gpu":
            import cupy as cp

            from .pipeline import device_array

            return device_array(cp, video[i]).copy()
        return np.array(video[i])

    # ------------------------------------------------------------------ the reader interface
    def read_windows(self, units: Sequence[DecodeUnit]) -> list[Result]:
        if not units:
            return []
        for u in units:
            n = int(self.index.num_frames[u.video])
            if u.length != self.length or u.stop > n:
                raise ValueError(f"unit {u} does not fit this reader (length {self.length}, video of {n} frames)")
        results: list[Result] = [None] * len(units)
        self._decode_or_bisect(list(range(len(units))), units, results)
        for u, r in zip(units, results):
            if not isinstance(r, BadVideo):
                check_stack(r, u, self.size)
        return results

    def _decode_or_bisect(self, todo: list[int], units: Sequence[DecodeUnit], results: list[Result]) -> None:
        """Decode the units ``todo``; on failure split their files in halves and recurse, so that
        only the files that fail alone are blamed."""
        try:
            stacks = self._run_chunk([units[k] for k in todo])
        except _ChunkFailed as e:
            videos = sorted({units[k].video for k in todo}, key=lambda v: min(k for k in todo if units[k].video == v))
            if len(videos) == 1:
                reason = f"DALI ({self.device}, {self.kind.value} reader) could not decode the planned frames ({e})"
                for k in todo:
                    results[k] = unit_error(self.index, units[k], reason)
                return
            log.warning("DALI %s reader failed on a chunk of %d windows (%s); looking for the file",
                        self.kind.value, len(todo), e)
            half = set(videos[:len(videos) // 2])
            self._decode_or_bisect([k for k in todo if units[k].video in half], units, results)
            self._decode_or_bisect([k for k in todo if units[k].video not in half], units, results)
            return
        for k, s in zip(todo, stacks):
            results[k] = s

    def close(self) -> None:
        pass


class DaliFramesReader:
    """Units of any length through ``fn.decoders.video`` with a frame list per source (the encoded
    files read by a thread pool): DALI's CPU decoder for VP8/VP9/MJPEG or NVDEC (``device="gpu"``).
    Each source costs a decoder creation on the GPU (GPU-FINDINGS: ~75 ms), so the stage sends it
    only the units that a fixed-length reader cannot take."""

    def __init__(self, index: DatasetIndex, device: str, size: tuple[int, int], num_threads: int = 2,
                 device_id: int = 0, max_sources: int = 64):
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device ({device!r}) must be 'cpu' or 'gpu'")
        self.index, self.device, self.size = index, device, (int(size[0]), int(size[1]))
        self.num_threads, self.device_id, self.max_sources = int(num_threads), int(device_id), int(max_sources)
        self.description = f"DALI fn.decoders.video ({device}, per source)"
        self._dec: Any = None
        self._pool: ThreadPoolExecutor | None = None

    def _decoder(self, n: int) -> Any:
        from .pipeline import DaliDecoder

        if self._dec is None or self._dec.max_sources < n:
            self._dec = DaliDecoder(self.size, self.device, max(self.max_sources, n), self.num_threads, self.device_id)
        return self._dec

    def read_windows(self, units: Sequence[DecodeUnit]) -> list[Result]:
        from .pipeline import DaliPipelineError, SourceRequest

        if not units:
            return []
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, min(8, self.num_threads)), thread_name_prefix="bsp-bytes")

        def load(u: DecodeUnit) -> Any:
            try:
                return read_bytes(self.index, u.video)
            except BadVideo as e:
                return e

        data = list(self._pool.map(load, units))
        results: list[Result] = list(data)
        live = [k for k, d in enumerate(data) if not isinstance(d, BadVideo)]
        requests = [SourceRequest(data[k], units[k].frames, units[k].crop, units[k].flip) for k in live]
        if not requests:
            return results
        dec = self._decoder(len(requests))
        try:
            stacks = dec.decode(requests)
        except DaliPipelineError:
            failed = set(dec.find_failures(requests))
            if not failed:
                raise
            for j in failed:
                results[live[j]] = unit_error(self.index, units[live[j]],
                                              f"DALI ({self.device}) could not decode the planned frames")
            good = [j for j in range(len(requests)) if j not in failed]
            if good:
                for j, s in zip(good, self.read_windows([units[live[j]] for j in good])):
                    results[live[j]] = s
            return results
        for k, s in zip(live, stacks):
            results[k] = s.copy()  # DALI reuses its output buffers on the next run
        _copies_done(self.device)
        for k in live:
            check_stack(results[k], units[k], self.size)
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._dec = None


__all__ = ["DaliFileListReader", "DaliFramesReader", "DaliReaderKind", "MAX_PIPELINE_BATCH", "file_list_lines",
           "pipeline_batch"]
