"""PyAV (FFmpeg) on the CPU: window decode, the frame readers, and the helpers of DALI's readers.

A frame reader's ``read(video, frames)`` returns the requested frames, FHWC uint8 RGB, in the
requested order (repeats allowed), where frame ``k`` is the ``k``-th frame a decoder returns in
presentation order (the index space of ``bsp-dali index`` and of every plan). :class:`PyAVReader`
reads real files (one keyframe seek, one forward decode per window; H.264 Kinetics files on a
laptop), :func:`select_reader` picks it or the procedural demo reader for an index. Whole windows
are decoded and transformed by ``bsp_dali.decode.readers.CPUWindowReader`` (threads) and
``bsp_dali.decode.procreader.ProcessWindowReader`` (worker processes) over these readers; DALI
(NVDEC on the GPU; VP8/VP9/MJPEG on the CPU) is in ``bsp_dali.decode.dali_readers`` and
``bsp_dali.decode.pipeline``, which read the encoded files with :func:`read_bytes`.
"""

from __future__ import annotations

import bisect
import itertools
import os
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..data.index import BadVideo, DatasetIndex, VideoInfo
from ..plan.augment import rgb24


class FrameReader(Protocol):
    def read(self, video: VideoInfo, frames: Sequence[int]) -> np.ndarray:  # FHWC uint8
        ...


class PyAVReader:
    """Decodes requested frames with PyAV: one seek to the nearest recorded keyframe at or before the
    first requested frame, then one forward decode through the last.

    ``threads``: FFmpeg decoding threads per file (0: FFmpeg's choice, frame and slice threads; 1: one
    thread, what worker processes use: one process per core is cheaper than threads per file).
    ``skip_nonref``: frames before the first requested one that no other frame references
    (B-frames, mostly) are not decoded at all; frames are then told apart by their pts, mapped to
    frame indices from the demuxed packets (:func:`decode_window`). Exact: the frames returned are
    the ones a full decode gives, and where the mapping is uncertain the reader decodes every frame.
    Off by default: this class is also the plain loop a user would write (the benchmark's
    baseline); the decode stage turns it on.
    ``rgb_threads``: 0 converts frames to RGB with PyAV's defaults, as a user would
    (``to_ndarray(format="rgb24")``, which lets swscale start a thread pool per frame); 1 converts
    on the calling thread (:func:`bsp_dali.plan.augment.rgb24`; same pixels, about half the CPU), what
    the decode stage uses.
    ``decoded`` / ``fallbacks`` count frames the decoder produced and windows that took the
    plain path (for profiles and tests).
    """

    def __init__(self, index: DatasetIndex, threads: int = 0, skip_nonref: bool = False, rgb_threads: int = 0):
        if threads < 0:
            raise ValueError(f"threads ({threads}) must be >= 0")
        if rgb_threads not in (0, 1):
            raise ValueError(f"rgb_threads ({rgb_threads}) must be 0 (PyAV's default) or 1")
        self.index = index
        self.threads = int(threads)
        self.skip_nonref = bool(skip_nonref)
        self.rgb_threads = int(rgb_threads)
        self.decoded = 0
        self.fallbacks = 0

    def read(self, video: VideoInfo, frames: Sequence[int]) -> np.ndarray:
        wanted = set(int(f) for f in frames)
        if not wanted:
            raise ValueError("no frames requested")
        got: dict[int, np.ndarray] = {}

        def keep(n: int, frame) -> None:
            if n in wanted:
                got[n] = rgb24(frame).to_ndarray() if self.rgb_threads == 1 else frame.to_ndarray(format="rgb24")

        path = self.index.resolve(video.path)
        self.window(video, min(wanted), max(wanted), keep)
        missing = sorted(wanted - set(got))
        if missing:
            raise BadVideo(path, f"frames {missing[:5]}{'...' if len(missing) > 5 else ''} could not be "
                                    f"decoded (the stream ended early)")
        return np.stack([got[int(f)] for f in frames])

    def window(self, video: VideoInfo, first: int, last: int, on_frame: Callable[[int, Any], None]) -> int:
        """Decode frames ``first..last`` of ``video``, calling ``on_frame(n, av_frame)`` for each in
        order. After a fallback (see :func:`decode_window`) frames are delivered again from
        ``first``: a caller that stores them by index simply overwrites. Returns the frames the
        decoder produced; raises :class:`BadVideo` naming the file."""
        stats = WindowStats()
        try:
            return read_window(self.index.resolve(video.path), video, first, last, on_frame, threads=self.threads,
                               skip_nonref=self.skip_nonref, stats=stats)
        finally:
            self.decoded += stats.decoded
            self.fallbacks += stats.fallbacks


def read_window(path: str, video: VideoInfo, first: int, last: int, on_frame: Callable[[int, Any], None],
                threads: int = 0, skip_nonref: bool = True, stats: "WindowStats | None" = None) -> int:
    """:func:`decode_window` for a video of the index at ``path`` (resolved), with its checks: a
    window outside the video, or any decoding failure, raises :class:`BadVideo` naming the file.
    Returns the frames the decoder produced (also added to ``stats``)."""
    if first < 0 or last >= video.num_frames or first > last:
        raise BadVideo(path, f"frames {first}..{last} requested, the video has {video.num_frames}")
    stats = stats if stats is not None else WindowStats()
    before = stats.decoded
    try:
        decode_window(path, video.keyframes, first, last, on_frame, threads=threads, skip_nonref=skip_nonref,
                      stats=stats)
    except BadVideo:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg errors come in many types
        raise BadVideo(path, f"decoding failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return stats.decoded - before


@dataclass
class WindowStats:
    """What :func:`decode_window` did: frames the decoder produced, and plain-path fallbacks (with
    the last reason)."""

    decoded: int = 0
    fallbacks: int = 0
    reason: str = ""


class _Uncertain(Exception):
    """The pts mapping of a skipping decode cannot be trusted: decode every frame instead."""


def _set_threads(stream: Any, threads: int) -> None:
    if threads == 1:
        stream.thread_type = "NONE"
        stream.codec_context.thread_count = 1
    else:
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads  # 0: FFmpeg picks


def decode_window(path: str, keyframes: Sequence[tuple[int, int]], first: int, last: int,
                  on_frame: Callable[[int, Any], None], threads: int = 0, skip_nonref: bool = True,
                  stats: WindowStats | None = None) -> None:
    """Frames ``first..last`` (presentation order) of the file, each passed to ``on_frame(n, frame)``
    (``av.VideoFrame``) in order; ``keyframes`` are the index's ``(frame index, pts)`` pairs.

    The skipping path (``skip_nonref``, with a recorded keyframe at or before ``first``): seek to
    the keyframe, demux packets until the pts of frame ``first`` is certain (the ``first - k``-th
    smallest pts at or after the keyframe's, once a packet's dts exceeds it: dts grow and never
    exceed pts, so no later packet can show before it), then decode with
    ``skip_frame = "NONREF"`` for packets shown before the window and ``"DEFAULT"`` from there.
    Skipped frames are, by definition, never referenced, so every frame the window shows decodes
    exactly as in a full decode; the first delivered frame must carry that pts and the pts must
    grow. Packets without pts or dts, dts that do not grow or exceed the pts, a seek that does not
    land on the keyframe, or any frame out of line: the window is decoded again on the plain path
    (every frame, counted from the keyframe; from the file's start if the seek misses), which is
    how ``bsp-dali index`` counted them. ``on_frame`` may then see frames from ``first`` again.
    """
    import av

    stats = stats if stats is not None else WindowStats()
    start = max((tuple(kf) for kf in keyframes if kf[0] <= first), default=None)
    if skip_nonref and start is not None:
        try:
            _decode_skipping(av, path, start, first, last, on_frame, threads, stats)
            return
        except _Uncertain as e:
            stats.fallbacks += 1
            stats.reason = str(e)
    if not _decode_counting(av, path, start, first, last, on_frame, threads, stats):
        _decode_counting(av, path, None, first, last, on_frame, threads, stats)  # the seek missed: from the start


def _decode_counting(av: Any, path: str, start: tuple[int, int] | None, first: int, last: int,
                     on_frame: Callable[[int, Any], None], threads: int, stats: WindowStats) -> bool:
    """Every frame from the keyframe ``start`` (or the file's start), counted; False when the seek
    does not land on that keyframe."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        _set_threads(stream, threads)
        n: int | None = 0
        if start is not None and start[0] > 0:
            container.seek(start[1], stream=stream, backward=True, any_frame=False)
            n = None
        for frame in container.decode(stream):
            stats.decoded += 1
            if n is None:
                if frame.pts != start[1]:  # type: ignore[index]
                    return False
                n = start[0]  # type: ignore[index]
            if n >= first:
                on_frame(n, frame)
            n += 1
            if n > last:
                break
    return True


# Containers whose packets carry their own pts and dts (not derived from codec parameters).
TIMESTAMPED_FORMATS = ("mov", "mp4", "matroska", "webm")
# Opening a file runs FFmpeg's stream probe, which decodes the first frames (several, for H.264
# without B-frames, to guess the reorder delay): most of the cost of opening a file for one short
# window. For the skipping path it only needs the container's own timestamps; the decoder learns
# what it needs from the bitstream. ``skip_frame`` here reaches only the probe's decoders.
FAST_OPEN = {"skip_frame": "all", "analyzeduration": "1"}


def _open_timestamped(av: Any, path: str) -> Any:
    """The file opened without decoding frames in the stream probe, for containers that carry pts
    and dts (MP4/MOV, Matroska/WebM); other containers are opened normally."""
    container = av.open(path, options=dict(FAST_OPEN))
    if any(name in TIMESTAMPED_FORMATS for name in container.format.name.split(",")):
        return container
    container.close()
    return av.open(path)


def _decode_skipping(av: Any, path: str, start: tuple[int, int], first: int, last: int,
                     on_frame: Callable[[int, Any], None], threads: int, stats: WindowStats) -> None:
    k_idx, k_pts = start
    need = first - k_idx  # frame `first` is the need-th smallest pts at or after the keyframe's
    with _open_timestamped(av, path) as container:
        stream = container.streams.video[0]
        _set_threads(stream, threads)
        ctx = stream.codec_context
        if k_idx > 0:
            container.seek(k_pts, stream=stream, backward=True, any_frame=False)
        packets = container.demux(stream)
        buffered: list[Any] = []
        shown: list[int] = []  # pts >= k_pts seen so far, sorted
        p_start: int | None = None
        prev_dts: int | None = None
        for pkt in packets:
            buffered.append(pkt)
            if pkt.size == 0:  # end of stream: every packet has been seen
                break
            if pkt.pts is None or pkt.dts is None:
                raise _Uncertain("a packet without pts or dts")
            if prev_dts is None:
                if not (pkt.is_keyframe and pkt.pts == k_pts):
                    raise _Uncertain(f"the first packet is not the keyframe at pts {k_pts}")
            elif pkt.dts <= prev_dts or pkt.dts > pkt.pts:
                raise _Uncertain("packet dts do not grow, or exceed their pts")
            prev_dts = pkt.dts
            if pkt.pts >= k_pts:
                bisect.insort(shown, pkt.pts)
            if len(shown) > need and pkt.dts > shown[need]:
                p_start = shown[need]
                break
        if p_start is None:
            if len(shown) <= need:
                raise _Uncertain("the stream ends before the window")
            p_start = shown[need]
        n = first
        prev_pts: int | None = None

        def deliver(frames: Sequence[Any]) -> bool:
            nonlocal n, prev_pts
            for frame in frames:
                stats.decoded += 1
                pts = frame.pts
                if pts is None:
                    raise _Uncertain("a decoded frame without pts")
                if pts < p_start:  # a reference frame before the window
                    continue
                if prev_pts is None:
                    if pts != p_start:
                        raise _Uncertain(f"the window's first frame has pts {pts}, expected {p_start}")
                elif pts <= prev_pts:
                    raise _Uncertain("decoded frames out of pts order")
                prev_pts = pts
                on_frame(n, frame)
                n += 1
                if n > last:
                    return True
            return False

        for pkt in itertools.chain(buffered, packets):
            if pkt.size == 0:  # end of stream: flushed below, once
                break
            ctx.skip_frame = "NONREF" if pkt.pts is not None and pkt.pts < p_start else "DEFAULT"
            if deliver(ctx.decode(pkt)):
                return
        ctx.skip_frame = "DEFAULT"
        if deliver(ctx.decode(None)):
            return
        if n <= last:
            raise _Uncertain("the stream ended inside the window")


def select_reader(index: DatasetIndex) -> FrameReader:
    """The CPU reader for an index: procedural demo videos or real files."""
    from ..data.demo import DEMO_SCHEME, DemoReader

    if index.videos and index.videos[0].path.startswith(DEMO_SCHEME):
        w, h = index.videos[0].width, index.videos[0].height
        return DemoReader(h or 64, w or 64)
    return PyAVReader(index)


def read_bytes(index: DatasetIndex, video: int) -> np.ndarray:
    """The encoded file as a uint8 array (the input of DALI's decoder)."""
    path = index.resolve(index.videos[video].path)
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise BadVideo(path, f"cannot be read ({e.strerror or e})") from None


def default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))
