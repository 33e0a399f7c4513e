"""The built-in demo data: procedurally animated "action classes", generated, never downloaded.

Each class is a kind of motion (a bouncing ball, a rotating bar, a pulsing ring, scrolling
stripes, a pendulum, a blinking checkerboard); each video draws its own colours, speed, phase and
background from its seed. Frames are a pure function of (class, video seed, frame index, size), so
any frame can be rendered on demand in any order, exactly like decoding a requested frame list.

Paths look like ``demo://<class>/<video number>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .index import DatasetIndex, VideoInfo

DEMO_CLASSES = ("bouncing_ball", "rotating_bar", "pulsing_ring", "scrolling_stripes", "pendulum",
                "blinking_checker")
DEMO_SCHEME = "demo://"


@dataclass(frozen=True)
class _Params:
    fg: np.ndarray
    bg: np.ndarray
    speed: float
    phase: float
    scale: float


def _params(cls: int, video: int) -> _Params:
    rng = np.random.default_rng([7, cls, video])
    fg = rng.integers(120, 256, size=3).astype(np.float32)
    bg = rng.integers(0, 90, size=3).astype(np.float32)
    return _Params(fg, bg, float(rng.uniform(0.6, 1.6)), float(rng.uniform(0, 2 * np.pi)),
                   float(rng.uniform(0.8, 1.2)))


def render_frame(cls: int, video: int, frame: int, height: int, width: int) -> np.ndarray:
    """One HWC uint8 frame of a demo video."""
    p = _params(cls, video)
    time = frame / 25.0 * p.speed * 2 * np.pi + p.phase
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = yy / max(height - 1, 1) * 2 - 1, xx / max(width - 1, 1) * 2 - 1  # [-1, 1]
    name = DEMO_CLASSES[cls % len(DEMO_CLASSES)]
    if name == "bouncing_ball":
        cx, cy = 0.6 * np.sin(time), -0.6 + 1.2 * abs(np.sin(0.5 * time))
        mask = (x - cx) ** 2 + (y - cy) ** 2 < (0.28 * p.scale) ** 2
    elif name == "rotating_bar":
        a = time
        d = np.abs(-np.sin(a) * x + np.cos(a) * y)
        mask = (d < 0.12 * p.scale) & (x**2 + y**2 < 0.8)
    elif name == "pulsing_ring":
        r = np.sqrt(x**2 + y**2)
        radius = 0.45 + 0.3 * np.sin(time)
        mask = np.abs(r - radius) < 0.1 * p.scale
    elif name == "scrolling_stripes":
        mask = np.sin((x * 4 + time) * np.pi * p.scale) > 0.3
    elif name == "pendulum":
        a = 0.9 * np.sin(time)
        bx, by = 0.75 * np.sin(a), -0.8 + 1.4 * np.cos(a)
        mask = ((x - bx) ** 2 + (y - by) ** 2 < 0.05 * p.scale) | (
            (np.abs(x * np.cos(a) - (y + 0.8) * np.sin(a)) < 0.04) & (y + 0.8 < 1.4 * np.cos(a)) & (y > -0.8))
    else:  # blinking_checker
        on = np.sin(time) > 0
        cells = (np.floor((x + 1) * 3 * p.scale) + np.floor((y + 1) * 3 * p.scale)) % 2 == 0
        mask = cells if on else ~cells
    img = np.where(mask[..., None], p.fg, p.bg)
    # a faint gradient so that every frame has texture everywhere
    img = img + 20 * (x[..., None] + 1)
    return np.clip(img, 0, 255).astype(np.uint8)


def parse_demo_path(path: str) -> tuple[int, int]:
    if not path.startswith(DEMO_SCHEME):
        raise ValueError(f"{path!r} is not a demo video path")
    name, _, num = path[len(DEMO_SCHEME):].partition("/")
    if name not in DEMO_CLASSES or not num.isdigit():
        raise ValueError(f"{path!r} is not a demo video path")
    return DEMO_CLASSES.index(name), int(num)


def demo_index(num_classes: int = 4, videos_per_class: int = 6, min_frames: int = 48,
               max_frames: int = 96, seed: int = 0, size: tuple[int, int] = (64, 64)) -> DatasetIndex:
    """An index of procedural videos (lengths drawn from the seed) rendered at ``size`` (H, W)."""
    if not (1 <= num_classes <= len(DEMO_CLASSES)):
        raise ValueError(f"num_classes ({num_classes}) must be in 1..{len(DEMO_CLASSES)}")
    if videos_per_class < 1 or min_frames < 1 or max_frames < min_frames:
        raise ValueError("videos_per_class >= 1 and 1 <= min_frames <= max_frames are required")
    rng = np.random.default_rng(seed)
    paths, names, lengths = [], [], []
    for c in range(num_classes):
        for v in range(videos_per_class):
            paths.append(f"{DEMO_SCHEME}{DEMO_CLASSES[c]}/{v}")
            names.append(DEMO_CLASSES[c])
            lengths.append(int(rng.integers(min_frames, max_frames + 1)))
    h, w = size
    return DatasetIndex.from_lists(paths, names, lengths, fps=25.0, sizes=[(w, h)] * len(paths))


class DemoReader:
    """Frame reader for ``demo://`` paths: the decode stage of the demo data."""

    def __init__(self, height: int = 64, width: int = 64):
        if height < 2 or width < 2:
            raise ValueError(f"frame size ({height}x{width}) must be at least 2x2")
        self.height, self.width = height, width

    def read(self, video: VideoInfo, frames: Sequence[int]) -> np.ndarray:
        """FHWC uint8 stack of the requested frames, in the requested order."""
        cls, num = parse_demo_path(video.path)
        for f in frames:
            if not (0 <= f < video.num_frames):
                raise IndexError(f"{video.path}: frame {f} is outside 0..{video.num_frames - 1}")
        out = np.empty((len(frames), self.height, self.width, 3), dtype=np.uint8)
        for i, f in enumerate(frames):
            out[i] = render_frame(cls, num, int(f), self.height, self.width)
        return out


def write_demo_videos(root: str | os.PathLike, num_classes: int = 4, per_class: int = 12,
                      size: tuple[int, int] = (64, 64), frames: tuple[int, int] = (64, 96), seed: int = 0,
                      progress: Callable[[int], None] | None = None) -> list[Path]:
    """Write the procedural classes as real H.264 files in the Kinetics layout
    ``root/train/<class>/<class>_<n>_000000_000010.mp4`` (skipping files already there)."""
    from .videogen import write_video

    if not (1 <= num_classes <= len(DEMO_CLASSES)):
        raise ValueError(f"num_classes ({num_classes}) must be in 1..{len(DEMO_CLASSES)}")
    rng = np.random.default_rng(seed)
    h, w = size
    paths = []
    for c in range(num_classes):
        name = DEMO_CLASSES[c]
        for v in range(per_class):
            n = int(rng.integers(frames[0], frames[1] + 1))
            path = Path(root) / "train" / name / f"{name}_{v:03d}_000000_000010.mp4"
            if not path.exists():
                write_video(path, (render_frame(c, v, i, h, w) for i in range(n)), fps=25.0, codec="h264", gop=25)
            paths.append(path)
            if progress:
                progress(1)
    return paths
