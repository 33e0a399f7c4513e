"""Probing one video file: is it usable, and what are its frames?

Two probes, chosen with :class:`ProbeMode` (``bsp-dali index --probe``):

* ``packets`` (the default of ``bsp-dali index``) reads the container only: it demuxes every
  packet of the first video stream without decoding any, and derives the frame count, the keyframe
  table (frame index and pts, in presentation order), codec, size and duration. Packets arrive in
  decode order; with B-frames that is not presentation order, so a packet's frame index is the rank
  of its pts among all packet pts. The count is checked against the container (the header's frame
  count, or duration x frame rate): too few packets is a truncated file. Where the packets cannot
  vouch for the frames, the file is decoded in full instead (the result says so in ``method``):
  packets without a pts, repeated pts, packets the demuxer flags corrupt, a stream that does not
  start with a keyframe (the decoder would drop the frames before it), or more packets than the
  container announces (packed or invisible frames).
* ``decode`` decodes the whole stream with PyAV (FFmpeg), so ``num_frames`` is the number of frames
  a decoder really returns in presentation order, and a file whose payload does not decode is
  caught here, once, rather than mid-epoch.

What the packet probe cannot see: bytes inside intact packets that do not decode (bit errors, a
payload cut short inside a packet that the container still lists whole, missing reference frames).
Such a file is indexed; the first read that reaches the bad frames fails, and the iterator bans the
file and redraws its samples (docs/iterator.md). ``--probe decode`` names these files up front.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from dataclasses import dataclass, field
from typing import Any

from .index import BadVideo


class ProbeMode(str, enum.Enum):
    """How a file is probed: its packets only (fast), or by decoding every frame (thorough)."""

    PACKETS = "packets"
    DECODE = "decode"

    @classmethod
    def parse(cls, value: "str | ProbeMode") -> "ProbeMode":
        """A member or its name (any case, like ``ChoiceEnum``); fails naming the choices."""
        try:
            return value if isinstance(value, cls) else cls(str(value).lower())
        except ValueError:
            raise ValueError(f"probe mode {value!r} is not one of {[m.value for m in cls]}") from None


@dataclass
class ProbeResult:
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    keyframes: list[tuple[int, int]] = field(default_factory=list)  # (frame index, pts), presentation order
    duration: float = 0.0  # seconds spanned by the frames (0.0 when unknown)
    method: str = ProbeMode.DECODE.value  # the probe that produced this result
    note: str = ""  # why a packet probe fell back to decoding


def probe(path: str | os.PathLike, mode: ProbeMode | str = ProbeMode.PACKETS, min_frames: int = 1) -> ProbeResult:
    """Probe ``path`` with ``mode``; raise :class:`BadVideo` if it is unusable."""
    mode = ProbeMode.parse(mode)
    if mode is ProbeMode.PACKETS:
        return probe_packets(path, min_frames=min_frames)
    return probe_video(path, min_frames=min_frames)


def _open(path: str) -> Any:
    """The opened container; :class:`BadVideo` for a file that is not a video with a video stream."""
    import av

    if not os.path.exists(path):
        raise BadVideo(path, "missing: the file does not exist")
    if os.path.isdir(path):
        raise BadVideo(path, "not a video: it is a directory")
    if os.path.getsize(path) == 0:
        raise BadVideo(path, "empty file (0 bytes)")
    try:
        container = av.open(path)
    except Exception as e:  # noqa: BLE001 - FFmpeg raises many kinds
        raise BadVideo(path, f"not a video or truncated: cannot be opened ({_short(e)})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise BadVideo(path, f"no video stream (streams: {', '.join(kinds)})")
    return container


def _rate(stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 25.0


def _announced_frames(container: Any, stream: Any, fps: float) -> int:
    """The frame count the container announces: its header's count, else duration x rate (0: none)."""
    expected = int(stream.frames or 0)
    if expected <= 0:
        seconds = None
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration:
            seconds = container.duration / 1e6
        expected = int(round(seconds * fps)) if seconds else 0
    return expected


def _too_few(n: int, expected: int) -> bool:
    return expected > 0 and n < expected * 0.95 - 2


def _rate_and_count(path: str, container: Any, stream: Any, n: int, counted: str) -> tuple[float, int]:
    """(fps, frames the container announces); :class:`BadVideo` when the ``n`` frames found
    (``counted``: what was counted) fall short of the announcement: a truncated file."""
    fps = _rate(stream)
    expected = _announced_frames(container, stream, fps)
    if _too_few(n, expected):
        raise BadVideo(path, f"truncated: {n} {counted}, the container announces about {expected}")
    return fps, expected


def _check_min_frames(path: str, n: int, min_frames: int) -> None:
    if n < min_frames:
        raise BadVideo(path, f"too few frames: {n} < {min_frames} needed by the clip settings")


def probe_video(path: str | os.PathLike, min_frames: int = 1) -> ProbeResult:
    """Decode every frame of ``path``'s first video stream; raise :class:`BadVideo` if unusable."""
    path = str(path)
    container = _open(path)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        codec = stream.codec_context.name
        keyframes: list[tuple[int, int]] = []
        n = 0
        width = height = 0
        first_pts = last_pts = None
        try:
            for frame in container.decode(stream):
                if n == 0:
                    width, height = frame.width, frame.height
                if frame.pts is not None:
                    first_pts = frame.pts if first_pts is None else min(first_pts, frame.pts)
                    last_pts = frame.pts if last_pts is None else max(last_pts, frame.pts)
                    if frame.key_frame:
                        keyframes.append((n, int(frame.pts)))
                n += 1
        except Exception as e:  # noqa: BLE001
            raise BadVideo(path, f"undecodable: decoding failed after {n} frames ({_short(e)})") from None
        if n == 0:
            raise BadVideo(path, "undecodable: no frame could be decoded")
        fps, _ = _rate_and_count(path, container, stream, n, "frames decoded")
        _check_min_frames(path, n, min_frames)
        duration = n / fps
        if first_pts is not None and last_pts is not None and stream.time_base is not None and n > 1:
            duration = float((last_pts - first_pts) * stream.time_base) * n / (n - 1)
        return ProbeResult(n, fps, width, height, codec, keyframes, duration=duration,
                           method=ProbeMode.DECODE.value)


def probe_packets(path: str | os.PathLike, min_frames: int = 1) -> ProbeResult:
    """Demux (never decode) ``path``'s first video stream; raise :class:`BadVideo` if unusable.

    Falls back to :func:`probe_video` for files whose packets do not map one to one onto frames
    (see the module docstring); the result's ``method`` and ``note`` say so."""
    path = str(path)
    container = _open(path)
    with container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        codec, width, height = ctx.name, int(ctx.width or 0), int(ctx.height or 0)
        pts: list[int] = []
        keys: list[bool] = []
        durations: list[int] = []
        no_pts = corrupt = 0
        first_is_key = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:  # the final flush packet; edit-list discards
                    continue
                if first_is_key is None:
                    first_is_key = bool(packet.is_keyframe)
                if packet.is_corrupt:
                    corrupt += 1
                if packet.pts is None:
                    no_pts += 1
                    continue
                pts.append(int(packet.pts))
                keys.append(bool(packet.is_keyframe))
                durations.append(int(packet.duration or 0))
        except Exception as e:  # noqa: BLE001
            raise BadVideo(path, f"truncated or corrupt: demuxing failed after {len(pts) + no_pts} packets "
                                 f"({_short(e)})") from None
        n = len(pts) + no_pts
        if n == 0:
            raise BadVideo(path, "no frames: the video stream holds no packets")
        fps, expected = _rate_and_count(path, container, stream, n, "frame packets")
        order = sorted(range(len(pts)), key=lambda i: (pts[i], i))  # presentation order
        doubt = ""
        if no_pts:
            doubt = f"{no_pts} packets without a pts"
        elif corrupt:
            doubt = f"{corrupt} packets flagged corrupt by the demuxer"
        elif len(set(pts)) != len(pts):
            doubt = "packets with repeated pts"
        elif not first_is_key or not keys[order[0]]:
            doubt = "the stream does not start with a keyframe"
        elif expected > 0 and n > expected * 1.05 + 2:
            doubt = f"{n} packets where the container announces about {expected} frames"
        if doubt:
            result = probe_video(path, min_frames=min_frames)
            return dataclasses.replace(result, note=f"{doubt}: decoded in full")
        rank = {i: r for r, i in enumerate(order)}
        keyframes = sorted((rank[i], pts[i]) for i in range(n) if keys[i])
        last = order[-1]
        tail = durations[last] or (pts[last] - pts[order[-2]] if n > 1 else 0)
        duration = float((pts[last] - pts[order[0]] + tail) * stream.time_base) if stream.time_base else n / fps
        _check_min_frames(path, n, min_frames)
        return ProbeResult(n, fps, width, height, codec, keyframes, duration=duration,
                           method=ProbeMode.PACKETS.value)


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]
