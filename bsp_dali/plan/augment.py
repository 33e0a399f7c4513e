"""Spatial transform of a sample: drawn once per sample by the planner, applied to all its sources.

A boundary must never be detectable from a change of crop alone, so both sources of a
diff_class/same_class clip get the same relative crop box and the same flip. The box is relative
(fractions of the frame: ``(y0, x0, y1, x1)``), drawn against the first source's size, so sources
of different resolutions are cut alike.

Modes:

* ``train``: random resized crop (area fraction in ``scale``, aspect ratio in ``ratio``, the
  torchvision recipe) and a horizontal flip with probability ``flip_prob``;
* ``eval``: the centre crop of ``crop_fraction`` of the short side at the output aspect ratio;
* ``resize``: the whole frame resized to the output size (previews).

The GPU applies the box with DALI's ``fn.resize`` (relative ROI, linear, antialiased); the CPU
with Pillow (bilinear, antialiased): the two agree within resampling tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import ChoiceEnum

Box = tuple[float, float, float, float]  # (y0, x0, y1, x1) relative
FULL_BOX: Box = (0.0, 0.0, 1.0, 1.0)


class SpatialMode(ChoiceEnum):
    TRAIN = "train"
    EVAL = "eval"
    RESIZE = "resize"

    @classmethod
    def what(cls) -> str:
        return "spatial mode"


@dataclass(frozen=True)
class SpatialConfig:
    """Output size and spatial augmentation. Defaults follow TSM/torchvision training: 224x224,
    random resized crop of 25%-100% of the area with aspect 3/4..4/3, horizontal flip half the time;
    evaluation takes the centre 87.5% of the short side."""

    size: tuple[int, int] = (224, 224)
    mode: SpatialMode = SpatialMode.TRAIN
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    crop_fraction: float = 0.875

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", SpatialMode.parse(self.mode))
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        h, w = self.size
        if h < 1 or w < 1:
            raise ValueError(f"size ({self.size}) must be positive")
        lo, hi = self.scale
        if not (0 < lo <= hi <= 1):
            raise ValueError(f"scale ({self.scale}) must satisfy 0 < min <= max <= 1")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"ratio ({self.ratio}) must satisfy 0 < min <= max")
        if not (0 <= self.flip_prob <= 1):
            raise ValueError(f"flip_prob ({self.flip_prob}) must be in [0, 1]")
        if not (0 < self.crop_fraction <= 1):
            raise ValueError(f"crop_fraction ({self.crop_fraction}) must be in (0, 1]")


def draw(rng: np.random.Generator, cfg: SpatialConfig, width: int, height: int) -> tuple[Box, bool]:
    """The (box, flip) of one sample; ``width``/``height`` of its first source (0 if unknown)."""
    if cfg.mode is SpatialMode.RESIZE:
        return FULL_BOX, False
    w = float(width) if width > 0 else float(cfg.size[1])
    h = float(height) if height > 0 else float(cfg.size[0])
    out_aspect = cfg.size[1] / cfg.size[0]
    if cfg.mode is SpatialMode.EVAL:
        bw = min(w, h * out_aspect) * cfg.crop_fraction
        bh = bw / out_aspect
        x0, y0 = (w - bw) / 2, (h - bh) / 2
        return (y0 / h, x0 / w, (y0 + bh) / h, (x0 + bw) / w), False
    area = w * h
    log_lo, log_hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    box = None
    for _ in range(10):  # torchvision's recipe: 10 tries, then a centre crop
        target = area * rng.uniform(cfg.scale[0], cfg.scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        bw, bh = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if 0 < bw <= w and 0 < bh <= h:
            x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            box = (y0 / h, x0 / w, (y0 + bh) / h, (x0 + bw) / w)
            break
    if box is None:
        aspect = min(max(w / h, cfg.ratio[0]), cfg.ratio[1])
        bw, bh = (w, w / aspect) if w / h < aspect else (h * aspect, h)
        box = ((h - bh) / 2 / h, (w - bw) / 2 / w, (h + bh) / 2 / h, (w + bw) / 2 / w)
    flip = bool(rng.random() < cfg.flip_prob)
    return box, flip


def apply_cpu(frames: np.ndarray, box: Box, flip: bool, size: tuple[int, int]) -> np.ndarray:
    """FHWC uint8 -> FHWC uint8 of ``size``: crop ``box``, resize (bilinear, antialiased), flip."""
    out = np.empty((frames.shape[0], size[0], size[1], frames.shape[3]), np.uint8)
    for f, frame in enumerate(frames):
        transform_frame_cpu(frame, box, flip, size, out[f])
    return out


def transform_frame_cpu(frame: np.ndarray, box: Box, flip: bool, size: tuple[int, int], out: np.ndarray) -> None:
    """One frame of :func:`apply_cpu`, HWC uint8, written into ``out`` (HWC uint8 of ``size``, any
    strides: a slot of shared memory in the decode workers). The same pixels as ``apply_cpu``."""
    from PIL import Image

    H, W = frame.shape[:2]
    if box == FULL_BOX and (H, W) == tuple(size):
        out[...] = frame[:, ::-1] if flip else frame
        return
    resized = _resize(Image.fromarray(frame), box, H, W, size)
    if frame.shape[2] == 3:
        _write_rgb(resized, flip, out)
    else:
        res = np.asarray(resized)
        out[...] = res[:, ::-1] if flip else res


def transform_av_frame(frame: Any, box: Box, flip: bool, size: tuple[int, int], out: np.ndarray) -> None:
    """:func:`transform_frame_cpu` of a decoded PyAV frame (``av.VideoFrame``): the same rgb24
    conversion, read by Pillow straight from FFmpeg's padded rows (a NumPy view of them is not
    contiguous, so ``Image.fromarray`` would copy it first; ``VideoFrame.to_image`` is slower
    still)."""
    from PIL import Image

    H, W = frame.height, frame.width
    if box == FULL_BOX and (H, W) == tuple(size):
        transform_frame_cpu(rgb24(frame).to_ndarray(), box, flip, size, out)  # swscale on this thread
        return
    rgb = rgb24(frame)
    plane = rgb.planes[0]
    image = Image.frombuffer("RGB", (W, H), plane, "raw", "RGB", plane.line_size, 1)
    _write_rgb(_resize(image, box, H, W, size), flip, out)


_SWS_THREADS_ARG: bool | None = None  # whether this PyAV's reformat takes ``threads`` (PyAV >= 15)


def rgb24(frame: Any) -> Any:
    """The frame in rgb24, converted by swscale on this thread. PyAV's default (``threads=0``)
    lets swscale start a thread pool for every conversion: one frame of 340x256 then costs twice
    the CPU, most of it creating threads and waiting on them (measured with strace: 11 threads per
    window). The pixels are the same."""
    global _SWS_THREADS_ARG
    if _SWS_THREADS_ARG is not False:
        try:
            out = frame.reformat(format="rgb24", threads=1)
            _SWS_THREADS_ARG = True
            return out
        except TypeError:  # an older PyAV without the argument
            _SWS_THREADS_ARG = False
    return frame.reformat(format="rgb24")


def _resize(image: Any, box: Box, H: int, W: int, size: tuple[int, int]) -> Any:
    from PIL import Image

    y0, x0, y1, x1 = box
    return image.resize((size[1], size[0]), Image.BILINEAR, box=(x0 * W, y0 * H, x1 * W, y1 * H))


def _write_rgb(image: Any, flip: bool, out: np.ndarray) -> None:
    """A Pillow RGB/RGBX image into ``out`` (HWC uint8, 3 channels): flipped and packed by Pillow,
    one contiguous copy here."""
    from PIL import Image

    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out[...] = np.frombuffer(image.tobytes("raw", "RGB"), np.uint8).reshape(out.shape)
