"""Writing real video files: for tests, the demo data set and the benchmarks (STYLE.md, 7).

``write_video`` encodes frames with PyAV (H.264, HEVC, MPEG-4, VP9, VP8 or MJPEG) in a container
chosen from the file name. ``index_frame`` draws a frame whose content identifies its index (bit
bands that survive lossy coding), and ``read_frame_index`` reads it back, so a test can assert that
a decoder returned exactly the frames it was asked for.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

# codec name (ours) -> (PyAV encoder, pixel format)
CODECS = {
    "h264": ("libx264", "yuv420p"),
    "hevc": ("libx265", "yuv420p"),
    "mpeg4": ("mpeg4", "yuv420p"),
    "vp9": ("libvpx-vp9", "yuv420p"),
    "vp8": ("libvpx", "yuv420p"),
    "mjpeg": ("mjpeg", "yuvj420p"),
}
INDEX_BITS = 10  # frame indices 0..1023 are encoded in the top half of an index frame


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 25.0,
                codec: str = "h264", gop: int | None = None, bframes: int = 2, crf: int = 18,
                times: Sequence[float] | None = None) -> int:
    """Encode HWC uint8 RGB frames into ``path``; returns the number of frames written.

    ``gop`` is the keyframe interval (default: 10 seconds' worth, like downloaded web video);
    ``bframes`` applies to H.264/HEVC. Width and height must be even for 4:2:0 codecs.
    ``times`` gives each frame's presentation time in seconds (increasing; millisecond precision),
    for variable-frame-rate files; by default frame i is shown at i / fps.
    """
    import av

    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(CODECS)}")
    encoder, pix_fmt = CODECS[codec]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part" + path.suffix)
    n = 0
    with av.open(str(tmp), mode="w") as container:
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream(encoder, rate=rate)
        stream.pix_fmt = pix_fmt
        opts: dict[str, str] = {}
        if codec in ("h264", "hevc"):
            opts = {"crf": str(crf), "preset": "veryfast", "bf": str(bframes)}
            if codec == "hevc":
                opts["x265-params"] = "log-level=error"
        elif codec in ("vp9", "vp8"):
            opts = {"crf": str(max(crf, 4)), "b:v": "0", "deadline": "realtime", "cpu-used": "8"}
        elif codec in ("mpeg4", "mjpeg"):
            opts = {"qscale": "3"}
            stream.codec_context.qmin = 2
            stream.codec_context.qmax = 4
        stream.options = opts
        stream.gop_size = int(gop if gop is not None else round(10 * fps))
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for frame in frames:
            if n == 0:
                stream.height, stream.width = frame.shape[:2]
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24")
            if times is not None:
                if n >= len(times) or (n and round(times[n] * 1000) <= round(times[n - 1] * 1000)):
                    raise ValueError(f"times must give one increasing time (ms apart) per frame; frame {n} has none")
                vf.pts, vf.time_base = int(round(times[n] * 1000)), Fraction(1, 1000)
            for packet in stream.encode(vf):
                container.mux(packet)
            n += 1
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return n


def index_frame(i: int, height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """A frame that says its own index: the top half has ``INDEX_BITS`` vertical bands, white for a
    set bit of ``i`` and black otherwise; the bottom half is a smooth pattern that moves with ``i``
    (so motion-sensitive code sees motion)."""
    if not (0 <= i < 2**INDEX_BITS):
        raise ValueError(f"frame index {i} does not fit in {INDEX_BITS} bits")
    img = np.zeros((height, width, 3), np.uint8)
    top = height // 2
    edges = np.linspace(0, width, INDEX_BITS + 1).astype(int)
    for b in range(INDEX_BITS):
        if (i >> b) & 1:
            img[:top, edges[b]:edges[b + 1]] = 255
    yy, xx = np.mgrid[top:height, 0:width]
    phase = (seed * 37 + i) * 0.3
    img[top:, :, 0] = (127 + 100 * np.sin(xx / 6.0 + phase)).astype(np.uint8)
    img[top:, :, 1] = (127 + 100 * np.cos(yy / 5.0 - phase)).astype(np.uint8)
    img[top:, :, 2] = (60 + 40 * seed) % 256
    return img


def read_frame_index(frame: np.ndarray) -> int:
    """Inverse of :func:`index_frame` for a decoded (possibly resized) frame, HWC."""
    h, w = frame.shape[:2]
    top = h // 2
    edges = np.linspace(0, w, INDEX_BITS + 1)
    value = 0
    for b in range(INDEX_BITS):
        lo, hi = int(edges[b] + (edges[b + 1] - edges[b]) * 0.3), int(edges[b] + (edges[b + 1] - edges[b]) * 0.7)
        band = frame[top // 5: top - top // 5, lo:max(hi, lo + 1)]
        if band.mean() > 127:
            value |= 1 << b
    return value


def write_index_video(path: str | os.PathLike, num_frames: int, height: int = 64, width: int = 64,
                      fps: float = 25.0, codec: str = "h264", seed: int = 0, gop: int | None = None) -> int:
    """A video whose frame ``i`` is ``index_frame(i)``."""
    return write_video(path, (index_frame(i, height, width, seed) for i in range(num_frames)), fps=fps,
                       codec=codec, gop=gop)


def write_kinetics_folder(root: str | os.PathLike, num_classes: int = 3, per_class: int = 3,
                          frames: tuple[int, int] = (40, 60), size: tuple[int, int] = (64, 96),
                          codec: str = "h264", split: str = "train", ext: str | None = None,
                          fps: float = 25.0, gop: int | None = 12, seed: int = 0) -> list[Path]:
    """A small Kinetics-layout folder ``root/split/class_k/<id>_<start>_<end>.<ext>`` of index
    videos (each frame says its index; ``seed`` varies the content per video). Returns the paths."""
    ext = ext or {"vp9": "webm", "vp8": "webm", "mjpeg": "avi"}.get(codec, "mp4")
    rng = np.random.default_rng(seed)
    paths = []
    for c in range(num_classes):
        for v in range(per_class):
            n = int(rng.integers(frames[0], frames[1] + 1))
            start = int(rng.integers(0, 300))
            path = Path(root) / split / f"class_{c}" / f"vid{c:02d}{v:02d}x{seed:03d}_{start:06d}_{start + 10:06d}.{ext}"
            write_index_video(path, n, size[0], size[1], fps=fps, codec=codec, seed=c * 100 + v, gop=gop)
            paths.append(path)
    return paths
