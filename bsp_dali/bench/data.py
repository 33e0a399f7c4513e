"""The benchmark's data: generated H.264 that decodes like real Kinetics, or a user's indexed folder.

Decoding cost grows with the bitrate (entropy decoding, residuals, prediction modes). Flat
procedural frames encode to 66-80 kbit/s at 340x256, where real camera and film clips at 320x240
run at 236-510 kbit/s, so a CPU decoder looked better on them than it is on Kinetics. The frames
here carry what real footage has (texture at several scales, film grain that changes every
frame, a camera that pans with sub-pixel motion, objects that move across it) and reach ~500
kbit/s at 340x256 with x264 at CRF 23. They are built with array slicing and a few lerps per
frame from fields drawn once per video, so generation costs far less than encoding.

The demo's training data (``bsp_dali/data/demo.py``) is not touched: its classes must stay learnable.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..data.index import DatasetIndex


@dataclass(frozen=True)
class BenchDataSpec:
    """Kinetics-like H.264: short side 256, 10 s at 25 fps, a keyframe every 250 frames and 3
    B-frames (x264's defaults, which is what re-encoded YouTube clips carry), CRF 23, with
    textured, grainy, camera-panned content (``textured_frames``)."""

    videos: int = 16
    classes: int = 4
    height: int = 256
    width: int = 340
    seconds: float = 10.0
    fps: float = 25.0
    gop: int = 250
    crf: int = 23
    bframes: int = 3
    grain: float = 4.0  # standard deviation of the per-frame grain, in 8-bit levels
    content: str = "textured-v1"  # bump when the generator changes: the cache key changes with it

    def __post_init__(self) -> None:
        for name in ("videos", "classes", "height", "width", "gop"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"BenchDataSpec.{name} ({getattr(self, name)}) must be >= 1")
        if self.height % 2 or self.width % 2:
            raise ValueError(f"BenchDataSpec size ({self.width}x{self.height}) must be even (4:2:0)")
        if not (self.seconds > 0 and self.fps > 0):
            raise ValueError(f"BenchDataSpec seconds ({self.seconds}) and fps ({self.fps}) must be > 0")

    @property
    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]

    @property
    def num_frames(self) -> int:
        return int(round(self.seconds * self.fps))


QUICK_DATA = BenchDataSpec(videos=6, classes=3, height=96, width=128, seconds=3.0, gop=75)


def _field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """A smooth random field of about ``cells`` features across the width, (h, w) float32 in
    [-0.5, 0.5]: random values on a coarse grid, upsampled by separable linear interpolation."""
    gw = max(2, cells)
    gh = max(2, int(round(cells * h / w)))
    grid = rng.random((gh, gw), dtype=np.float32) - 0.5
    ys = np.linspace(0, gh - 1, h, dtype=np.float32)
    xs = np.linspace(0, gw - 1, w, dtype=np.float32)
    y0 = np.minimum(ys.astype(np.int64), gh - 2)
    x0 = np.minimum(xs.astype(np.int64), gw - 2)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 around mid-grey: colour regions plus detail at four scales."""
    out = np.empty((h, w, 3), np.float32)
    base = [_field(rng, h, w, 3) for _ in range(3)]
    detail = sum(a * _field(rng, h, w, c) for a, c in ((60.0, 12), (40.0, 40), (28.0, max(4, w // 6))))
    fine = 40.0 * (rng.random((h, w), dtype=np.float32) - 0.5)  # pixel-scale detail (foliage, cloth)
    for ch in range(3):
        out[..., ch] = 128 + 90 * base[ch] + detail + fine
    return out


def textured_frames(cls: int, video: int, num_frames: int, height: int, width: int, grain: float = 4.0,
                    seed: int = 0) -> Iterator[np.ndarray]:
    """HWC uint8 RGB frames of a textured scene seen by a panning camera, with moving objects and
    per-frame grain; a pure function of its arguments. ``cls`` shifts the colours and motion
    statistics so that classes differ (the planner needs labels; the bench does not learn them)."""
    if num_frames < 1 or height < 2 or width < 2:
        raise ValueError(f"num_frames ({num_frames}) >= 1 and a size of at least 2x2 ({height}x{width}) are needed")
    rng = np.random.default_rng([seed, cls, video])
    margin_y, margin_x = max(8, height // 4), max(8, width // 4)
    canvas = _texture(rng, height + 2 * margin_y + 1, width + 2 * margin_x + 1)
    canvas += np.asarray([20.0 * np.sin(cls + c) for c in range(3)], np.float32)  # class tint
    # camera: two sinusoids per axis with random periods (4-12 s) and phases: smooth, sub-pixel
    t = np.arange(num_frames, dtype=np.float64)
    periods = rng.uniform(100, 300, 4)
    phases = rng.uniform(0, 2 * np.pi, 4)
    cam_x = margin_x + (margin_x - 1) * (0.7 * np.sin(2 * np.pi * t / periods[0] + phases[0])
                                         + 0.3 * np.sin(2 * np.pi * t / periods[1] + phases[1]))
    cam_y = margin_y + (margin_y - 1) * (0.7 * np.sin(2 * np.pi * t / periods[2] + phases[2])
                                         + 0.3 * np.sin(2 * np.pi * t / periods[3] + phases[3]))
    # objects: textured patches moving on straight lines that wrap around the frame
    n_obj = 3
    oh, ow = max(2, height // 4), max(2, width // 5)
    sprites = [_texture(rng, oh, ow) * 0.8 + 40 * (rng.random(3, dtype=np.float32) - 0.5) for _ in range(n_obj)]
    pos = rng.random((n_obj, 2)) * (height - oh, width - ow)
    vel = rng.uniform(-3.0, 3.0, (n_obj, 2)) * (1 + 0.3 * cls)
    # grain: a few large noise fields, one chosen per frame at a random offset (fresh noise each
    # frame for the encoder at a fraction of the cost of drawing it)
    pool = [rng.standard_normal((height + 64, width + 64), dtype=np.float32) * grain for _ in range(4)]
    lum = np.empty((height, width, 1), np.float32)
    for i in range(num_frames):
        x0, y0 = int(cam_x[i]), int(cam_y[i])
        ax, ay = np.float32(cam_x[i] - x0), np.float32(cam_y[i] - y0)
        a = canvas[y0:y0 + height + 1, x0:x0 + width + 1]
        a = a[:, :-1] * (1 - ax) + a[:, 1:] * ax
        img = a[:-1] * (1 - ay) + a[1:] * ay
        for k in range(n_obj):
            py, px = (pos[k] + vel[k] * i) % (height - oh + 1, width - ow + 1)
            py, px = int(py), int(px)
            img[py:py + oh, px:px + ow] = sprites[k]
        g = pool[int(rng.integers(len(pool)))]
        oy, ox = int(rng.integers(64)), int(rng.integers(64))
        lum[..., 0] = g[oy:oy + height, ox:ox + width]
        img += lum
        yield np.clip(img, 0, 255).astype(np.uint8)


def bench_data(spec: BenchDataSpec, cache: str | os.PathLike | None = None,
               progress: Callable[[int, int], None] | None = None) -> DatasetIndex:
    """Generate (once, cached by every setting of ``spec``) and index the benchmark videos."""
    from ..data.ingest import MANIFEST_NAME, index_data, load_data
    from ..data.videogen import write_video

    base = Path(cache or os.environ.get("BSP_DALI_CACHE", Path.home() / ".cache" / "bsp-dali")) / f"bench-{spec.key}"
    if (base / MANIFEST_NAME).is_file():
        return load_data(base)
    n = spec.num_frames
    for k in range(spec.videos):
        c = k % spec.classes
        path = base / "train" / f"class_{c}" / f"bench{k:03d}_000000_000010.mp4"
        if not path.exists():
            write_video(path, textured_frames(c, k, n, spec.height, spec.width, spec.grain), fps=spec.fps,
                        codec="h264", gop=spec.gop, bframes=spec.bframes, crf=spec.crf)
        if progress:
            progress(k + 1, spec.videos)
    index_data(base, min_frames=8)
    return load_data(base)


def transcoded_data(index: DatasetIndex, gop: int, cache: str | os.PathLike | None = None,
                    workers: int | None = None) -> DatasetIndex:
    """``index``'s videos re-encoded by ``bsp-dali transcode`` with a keyframe every ``gop`` frames
    (no B-frames, same size, same frames), indexed: the short-GOP copy the bench compares with the
    data as given. Cached beside the bench data; a rerun reuses finished outputs (the transcoder
    checks each one)."""
    from ..data.ingest import MANIFEST_NAME, build_index, load_data
    from ..data.transcode import REPORT_NAME, TranscodeError, TranscodeSettings, transcode_dataset

    if gop < 1:
        raise ValueError(f"--data-gop ({gop}) must be >= 1")
    if index.root is None:
        raise ValueError("the bench data has no root folder to transcode")
    key = hashlib.sha1(f"{Path(index.root).resolve()}|{gop}".encode()).hexdigest()[:10]
    base = Path(cache or os.environ.get("BSP_DALI_CACHE", Path.home() / ".cache" / "bsp-dali"))
    dst = base / f"transcoded-{Path(index.root).name}-gop{gop}-{key}"
    rep = transcode_dataset(index, dst, TranscodeSettings(gop=gop, keep_size=True), workers=workers)
    if rep.failed:  # the comparison needs every video; the report lists each failure
        first = rep.failed[0]
        raise TranscodeError(f"--data-gop {gop}: transcoding the bench data into {dst} failed for "
                             f"{len(rep.failed)} video(s) (first: {first.src}: {str(first.reason).splitlines()[0]}; "
                             f"all in {dst / REPORT_NAME})")
    built = build_index(dst, rep.entries(), min_frames=8).index
    built.save(dst / MANIFEST_NAME)
    return load_data(dst)


def user_data(folder: str | os.PathLike) -> DatasetIndex:
    """A user's folder indexed with ``bsp-dali index``; a clear error otherwise."""
    from ..data.ingest import IngestError, load_data

    p = Path(folder)
    if not p.exists():
        raise IngestError(f"--data {p}: no such folder")
    if not p.is_dir():
        raise IngestError(f"--data {p}: not a folder (give the folder you indexed with `bsp-dali index`)")
    index = load_data(p)  # names the missing manifest and the command that writes it
    if len(index) == 0:
        raise IngestError(f"--data {p}: the manifest lists no usable videos")
    return index


def describe_data(index: DatasetIndex, spec: BenchDataSpec | None = None) -> dict[str, Any]:
    """What the videos cost to decode, from the manifest: bits per second (file bytes over
    duration), keyframe interval (GOP), resolution and codecs. ``spec`` adds the generator's
    settings for generated data."""
    videos = index.videos
    seconds = sum(v.num_frames / v.fps for v in videos)
    total_bytes = sum(v.file_size for v in videos)
    # GOP from the keyframe tables: frames per recorded keyframe (a file with one keyframe counts
    # its whole length). `bsp-dali index` keeps keyframes >= 8 frames apart, so shorter GOPs
    # read as 8.
    gops = [v.num_frames / max(1, len(v.keyframes)) for v in videos]
    sizes = sorted({(v.width, v.height) for v in videos})
    out: dict[str, Any] = {
        "videos": len(videos), "classes": index.num_classes, "root": index.root,
        "seconds": seconds, "bits_per_s": 8 * total_bytes / seconds if seconds and total_bytes else None,
        "gop_frames_mean": float(np.mean(gops)) if gops else None,
        "gop_frames_max": max(gops) if gops else None,
        "sizes": [f"{w}x{h}" for w, h in sizes[:8]] + (["..."] if len(sizes) > 8 else []),
        "codecs": sorted({v.codec or "?" for v in videos}),
    }
    if spec is not None:
        out["generated"] = dict(asdict(spec), codec="h264", encoder="x264 veryfast",
                                note=" ".join((BenchDataSpec.__doc__ or "").split()))
    return out


__all__ = ["BenchDataSpec", "QUICK_DATA", "bench_data", "describe_data", "textured_frames", "transcoded_data",
           "user_data"]
