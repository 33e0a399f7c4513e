"""Decoding the planned frames: the CPU readers (PyAV, and the demo videos) and the batch decode.

``read(video, frames)`` returns the requested frames, FHWC uint8 RGB, in the requested order
(repeats allowed), where frame ``k`` is the ``k``-th frame a decoder returns in presentation order
(the index space of ``bsp-dali index`` and of every plan). DALI decodes on the GPU (NVDEC) and,
for VP8/VP9/MJPEG, on the CPU; see ``bsp_dali/pipeline.py``. Everything else on the CPU goes
through PyAV (FFmpeg), which is how H.264 Kinetics files are read on a laptop.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from .augment import Box, apply_cpu
from .index import DatasetIndex, VideoInfo
from .planner import SamplePlan


class DecodeError(Exception):
    """A video that failed to decode the frames a plan asked for (``path``, ``reason``)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class FrameReader(Protocol):
    def read(self, video: VideoInfo, frames: Sequence[int]) -> np.ndarray:  # FHWC uint8
        ...


class PyAVReader:
    """Decodes requested frames with PyAV, seeking to the nearest recorded keyframe first."""

    def __init__(self, index: DatasetIndex):
        self.index = index

    def read(self, video: VideoInfo, frames: Sequence[int]) -> np.ndarray:
        import av

        path = self.index.resolve(video.path)
        wanted = set(int(f) for f in frames)
        if not wanted:
            raise ValueError("no frames requested")
        first, last = min(wanted), max(wanted)
        if first < 0 or last >= video.num_frames:
            raise DecodeError(path, f"frames {first}..{last} requested, the video has {video.num_frames}")
        got: dict[int, np.ndarray] = {}
        try:
            start = max((kf for kf in video.keyframes if kf[0] <= first), default=None)
            if not self._decode(av, path, start, wanted, last, got):
                got.clear()  # the seek did not land on a known keyframe: decode from the start
                self._decode(av, path, None, wanted, last, got)
        except DecodeError:
            raise
        except Exception as e:  # noqa: BLE001 - FFmpeg errors come in many types
            raise DecodeError(path, f"decoding failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        missing = sorted(wanted - set(got))
        if missing:
            raise DecodeError(path, f"frames {missing[:5]}{'...' if len(missing) > 5 else ''} could not be "
                                    f"decoded (the stream ended early)")
        return np.stack([got[int(f)] for f in frames])

    @staticmethod
    def _decode(av, path: str, start: tuple[int, int] | None, wanted: set[int], last: int,
                got: dict[int, np.ndarray]) -> bool:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            n: int | None = 0
            if start is not None and start[0] > 0:
                container.seek(start[1], stream=stream, backward=True, any_frame=False)
                n = None
            for frame in container.decode(stream):
                if n is None:
                    if frame.pts != start[1]:  # type: ignore[index]
                        return False
                    n = start[0]  # type: ignore[index]
                if n in wanted:
                    got[n] = frame.to_ndarray(format="rgb24")
                n += 1
                if n > last:
                    break
        return True


def select_reader(index: DatasetIndex) -> FrameReader:
    """The CPU reader for an index: procedural demo videos or real files."""
    from .demo import DEMO_SCHEME, DemoReader

    if index.videos and index.videos[0].path.startswith(DEMO_SCHEME):
        w, h = index.videos[0].width, index.videos[0].height
        return DemoReader(h or 64, w or 64)
    return PyAVReader(index)


@dataclass(frozen=True)
class SourceJob:
    """One source of a batch to decode: a video, its planned frames and its sample's transform."""

    video: int
    frames: tuple[int, ...]
    crop: Box
    flip: bool


def source_jobs(plans: Sequence[SamplePlan]) -> list[SourceJob]:
    """Every source of a batch, in the kernel's source order (sample by sample, slot by slot)."""
    return [SourceJob(src.video, frames, plan.crop, plan.flip)
            for plan in plans for src, frames in zip(plan.sources, plan.frames)]


def decode_cpu(jobs: Sequence[SourceJob], index: DatasetIndex, reader: FrameReader, size: tuple[int, int],
               pool: ThreadPoolExecutor | None = None) -> list[np.ndarray | DecodeError]:
    """Decode and spatially transform sources on the CPU (in parallel threads).

    Returns one FHWC uint8 stack of ``size`` per job, or the :class:`DecodeError` of a job that
    failed (the caller replaces its sample)."""

    def one(job: SourceJob) -> np.ndarray | DecodeError:
        try:
            stack = reader.read(index.videos[job.video], job.frames)
        except DecodeError as e:
            return e
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
            return DecodeError(index.resolve(index.videos[job.video].path), f"{type(e).__name__}: {e}")
        return apply_cpu(stack, job.crop, job.flip, size)

    if pool is None:
        return [one(j) for j in jobs]
    return list(pool.map(one, jobs))


def read_bytes(index: DatasetIndex, video: int) -> np.ndarray:
    """The encoded file as a uint8 array (the input of DALI's decoder)."""
    path = index.resolve(index.videos[video].path)
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DecodeError(path, f"cannot be read ({e.strerror or e})") from None


def default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))
