"""The DALI decode pipeline: encoded bytes + planned frame lists -> resized, cropped, flipped stacks.

One DALI sample is one *source* of a synthesized clip. External sources feed, per source, the
encoded file (read from disk by a thread pool ahead of time), its ``frames`` list (only the planned
frames are decoded), its relative crop box and its flip. ``fn.decoders.video`` decodes them in
parallel across samples: with ``device="mixed"`` on NVDEC, with ``device="cpu"`` through FFmpeg
for VP8/VP9/MJPEG. ``pad_mode="none"`` makes a frame beyond a file's end an error instead of a
silently padded frame. The stacks come out FHWC uint8 of the output size, on the GPU for the mixed
pipeline, ready for the synthesis kernel without a host round trip.

DALI is imported only here, lazily.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ..gpu import import_dali

log = logging.getLogger(__name__)

# Codecs DALI's CPU decoder handles (everything else decodes on the GPU only).
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})


class DaliPipelineError(RuntimeError):
    """DALI failed on a batch; the pipeline has been rebuilt (``find_failures`` names the culprits)."""


def device_array(cp: Any, tensor: Any) -> Any:
    """A CuPy view of a DALI GPU tensor: through DLPack with CuPy's current stream (DALI orders its
    work before that stream reads), else through the CUDA array interface (version 2, no stream)."""
    try:
        return cp.from_dlpack(tensor)
    except (TypeError, AttributeError, BufferError, RuntimeError):
        return cp.asarray(tensor)


class SourceRequest:
    """One source to decode: encoded bytes, frames, relative box (y0, x0, y1, x1), flip."""

    __slots__ = ("data", "frames", "box", "flip")

    def __init__(self, data: np.ndarray, frames: Sequence[int], box: Sequence[float], flip: bool):
        self.data = data
        self.frames = np.asarray(frames, dtype=np.int32)
        self.box = tuple(float(b) for b in box)
        self.flip = bool(flip)


class DaliDecoder:
    """A DALI pipeline driven batch by batch: ``decode(requests)`` returns one stack per request,
    CuPy arrays for ``device="gpu"`` (valid until the next ``decode``), NumPy for ``"cpu"``.
    Overlap with planning and file reading comes from the iterator's prefetch thread; within a
    batch DALI decodes the sources in parallel (NVDEC, or ``num_threads`` CPU threads).
    """

    def __init__(self, size: tuple[int, int], device: str = "gpu", max_sources: int = 64, num_threads: int = 4,
                 device_id: int = 0):
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device ({device!r}) must be 'cpu' or 'gpu'")
        self.size = (int(size[0]), int(size[1]))
        self.device = device
        self.max_sources = int(max_sources)
        self.num_threads = int(num_threads)
        self.device_id = int(device_id)
        self._pipe = self._build()

    def _build(self) -> Any:
        dali = import_dali()
        from nvidia.dali import fn, types

        size, device = self.size, self.device

        @dali.pipeline_def
        def decode_pipe():  # pragma: no cover - traced by DALI
            enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
            roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
            flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
            video = fn.decoders.video(enc, frames=frames, device="mixed" if device == "gpu" else "cpu",
                                      pad_mode="none")
            video = fn.resize(video, size=list(size), roi_start=roi_start, roi_end=roi_end, roi_relative=True,
                              antialias=True, interp_type=types.INTERP_LINEAR)
            return fn.flip(video, horizontal=flip)

        pipe = decode_pipe(batch_size=self.max_sources, num_threads=self.num_threads,
                           device_id=self.device_id if device == "gpu" else None,
                           prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        pipe.build()
        return pipe

    def _run(self, requests: Sequence[SourceRequest]) -> Any:
        p = self._pipe
        p.feed_input("enc", [r.data for r in requests])
        p.feed_input("frames", [r.frames for r in requests])
        p.feed_input("roi_start", [np.array(r.box[:2], np.float32) for r in requests])
        p.feed_input("roi_end", [np.array(r.box[2:], np.float32) for r in requests])
        p.feed_input("flip", [np.array(int(r.flip), np.int32) for r in requests])
        (out,) = p.run()
        return out

    def decode(self, requests: Sequence[SourceRequest]) -> list[Any]:
        """Decode one batch. On a DALI error the pipeline is rebuilt and
        :class:`DaliPipelineError` carries the failed requests."""
        if not requests:
            raise ValueError("empty batch")
        if len(requests) > self.max_sources:
            raise ValueError(f"{len(requests)} sources exceed the pipeline's batch size {self.max_sources}")
        try:
            out = self._run(requests)
        except Exception as e:  # noqa: BLE001 - DALI reports decode errors as RuntimeError
            log.warning("DALI failed on a batch of %d sources: %s", len(requests),
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            self._pipe = self._build()  # DALI invalidates a pipeline after an error
            raise DaliPipelineError(str(e)) from None
        if self.device == "gpu":
            import cupy as cp

            return [device_array(cp, out[i]) for i in range(len(requests))]
        return [np.array(out[i]) for i in range(len(requests))]

    def find_failures(self, requests: Sequence[SourceRequest]) -> list[int]:
        """Positions of the requests that fail when decoded alone."""
        bad = []
        for i, r in enumerate(requests):
            try:
                self._run([r])
            except Exception:  # noqa: BLE001
                bad.append(i)
                self._pipe = self._build()
        return bad
