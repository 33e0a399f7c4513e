"""Probing one video file: is it usable, and what are its frames?

A probe decodes the whole video stream with PyAV (FFmpeg), so that ``num_frames`` is the number of
frames a decoder really returns in presentation order (the index space of every plan) and a
truncated or corrupt file is caught here, once, rather than mid-epoch. It also records the
keyframes (frame index and timestamp) so that readers can seek.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


class BadVideo(Exception):
    """A file that cannot be used, with the reason in words (``str(e)``)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class ProbeResult:
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    keyframes: list[tuple[int, int]] = field(default_factory=list)  # (frame index, pts)


def probe_video(path: str | os.PathLike, min_frames: int = 1) -> ProbeResult:
    """Decode every frame of ``path``'s first video stream; raise :class:`BadVideo` if unusable."""
    import av

    path = str(path)
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
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise BadVideo(path, f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        codec = stream.codec_context.name
        expected = int(stream.frames or 0)
        keyframes: list[tuple[int, int]] = []
        n = 0
        width = height = 0
        try:
            for frame in container.decode(stream):
                if n == 0:
                    width, height = frame.width, frame.height
                if frame.key_frame and frame.pts is not None:
                    keyframes.append((n, int(frame.pts)))
                n += 1
        except Exception as e:  # noqa: BLE001
            raise BadVideo(path, f"undecodable: decoding failed after {n} frames ({_short(e)})") from None
        if n == 0:
            raise BadVideo(path, "undecodable: no frame could be decoded")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 25.0
        if expected <= 0:  # no frame count in the header: derive one from the announced duration
            seconds = None
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration:
                seconds = container.duration / 1e6
            expected = int(round(seconds * fps)) if seconds else 0
        if expected > 0 and n < expected * 0.95 - 2:
            raise BadVideo(path, f"truncated: {n} frames decoded, the container announces about {expected}")
        if n < min_frames:
            raise BadVideo(path, f"too few frames: {n} < {min_frames} needed by the clip settings")
        return ProbeResult(n, fps, width, height, codec, keyframes)


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]
