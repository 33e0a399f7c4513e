"""Rendering plans into clips: recipe tables, the NumPy reference and the backend switch.

The synthesis stage is a deterministic function of its inputs (STYLE.md, 2):

* ``sources``: one decoded stack per source of the batch, FHWC uint8 (NumPy or CuPy), all with
  the same H, W, C; source ``s`` holds the frames ``plans[n].frames[slot]`` in that order.
* ``tables``: :class:`RecipeTables`, for every output frame ``(n, t)`` up to ``K`` terms
  ``(source id, frame position, weight)``.

and returns the batch in the training layout (NCTHW by default, NTCHW on request) as float32,
float16, bfloat16 (returned as uint16 bit patterns, see :func:`bsp_dali.torch_view`) or uint8
(previews: rounded blend, no normalisation).

``synthesize_reference`` defines the semantics; the CUDA kernel in ``kernels/bsp_synth.cu``
computes the same values bit for bit (float32 products and sums without FMA contraction).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..plan.config import ChoiceEnum
from ..plan.planner import SamplePlan

# ImageNet statistics in pixel units (0..255): TSM's torchvision backbones expect them.
DEFAULT_MEAN = (123.675, 116.28, 103.53)
DEFAULT_STD = (58.395, 57.12, 57.375)
MAX_CHANNELS = 4  # BSP_MAX_C in the kernel
TERMS_PER_FRAME = 2  # a blend mixes at most two sources


class OutDType(ChoiceEnum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    UINT8 = "uint8"

    @classmethod
    def what(cls) -> str:
        return "output dtype"

    @property
    def storage(self) -> np.dtype:
        """The array dtype that holds the values (bfloat16 travels as uint16 bits)."""
        return np.dtype({"float32": np.float32, "float16": np.float16,
                         "bfloat16": np.uint16, "uint8": np.uint8}[self.value])


class Layout(ChoiceEnum):
    NCTHW = "NCTHW"
    NTCHW = "NTCHW"

    @classmethod
    def what(cls) -> str:
        return "layout"

    def shape(self, N: int, T: int, H: int, W: int, C: int) -> tuple[int, ...]:
        return (N, C, T, H, W) if self is Layout.NCTHW else (N, T, C, H, W)

    def strides(self, N: int, T: int, H: int, W: int, C: int) -> tuple[int, int, int, int, int]:
        """Element strides (sN, sC, sT, sH, sW) of a contiguous array in this layout."""
        if self is Layout.NCTHW:
            return (C * T * H * W, T * H * W, H * W, W, 1)
        return (T * C * H * W, H * W, C * H * W, W, 1)


@dataclass(frozen=True)
class RecipeTables:
    """Per output frame ``(n, t)``, ``K`` terms: source id (-1 = unused), frame position, weight.

    Arrays are int32/int32/float32 with shape (N, T, K): the small device tables of the kernel.
    ``frames_per_source[s]`` is the number of frames source ``s`` must provide.
    """

    src: np.ndarray
    frame: np.ndarray
    weight: np.ndarray
    frames_per_source: tuple[int, ...]

    @property
    def N(self) -> int:  # noqa: N802
        return int(self.src.shape[0])

    @property
    def T(self) -> int:  # noqa: N802
        return int(self.src.shape[1])

    @property
    def K(self) -> int:  # noqa: N802
        return int(self.src.shape[2])

    @classmethod
    def from_plans(cls, plans: Sequence[SamplePlan], K: int = TERMS_PER_FRAME) -> "RecipeTables":
        """Tables for a batch; sources are numbered sample by sample, slot by slot."""
        if not plans:
            raise ValueError("a batch needs at least one plan")
        T = plans[0].T
        if any(p.T != T for p in plans):
            raise ValueError(f"all plans of a batch must have the same T; got {sorted({p.T for p in plans})}")
        src = np.full((len(plans), T, K), -1, dtype=np.int32)
        frame = np.zeros((len(plans), T, K), dtype=np.int32)
        weight = np.zeros((len(plans), T, K), dtype=np.float32)
        counts: list[int] = []
        for n, plan in enumerate(plans):
            base = len(counts)
            counts.extend(len(f) for f in plan.frames)
            for t, terms in enumerate(plan.positions()):
                if len(terms) > K:
                    raise ValueError(f"sample {plan.index}: frame {t} has {len(terms)} terms, more than K={K}")
                for k, (slot, pos, w) in enumerate(terms):
                    src[n, t, k] = base + slot
                    frame[n, t, k] = pos
                    weight[n, t, k] = w
        return cls(src, frame, weight, tuple(counts))

    def validate(self, source_shapes: Sequence[tuple[int, ...]]) -> tuple[int, int, int]:
        """Check sources against the tables; returns (H, W, C). Raises ValueError naming the
        offending source or term."""
        if not (self.src.shape == self.frame.shape == self.weight.shape) or self.src.ndim != 3:
            raise ValueError("recipe tables must all have shape (N, T, K)")
        if len(source_shapes) != len(self.frames_per_source):
            raise ValueError(
                f"the tables name {len(self.frames_per_source)} sources but {len(source_shapes)} were given"
            )
        hwc = None
        for s, shape in enumerate(source_shapes):
            if len(shape) != 4:
                raise ValueError(f"source {s} must be FHWC (4 dims), got shape {tuple(shape)}")
            if shape[0] < self.frames_per_source[s]:
                raise ValueError(
                    f"source {s} has {shape[0]} frames, the recipe needs {self.frames_per_source[s]}"
                )
            if hwc is None:
                hwc = tuple(int(v) for v in shape[1:])
            elif tuple(shape[1:]) != hwc:
                raise ValueError(f"source {s} has frame size {tuple(shape[1:])}, source 0 has {hwc}")
        assert hwc is not None
        if not (1 <= hwc[2] <= MAX_CHANNELS):
            raise ValueError(f"frames have {hwc[2]} channels; 1..{MAX_CHANNELS} are supported")
        used = self.src >= 0
        if (self.src >= len(source_shapes)).any():
            raise ValueError("recipe table names a source id beyond the given sources")
        if used.any():
            limit = np.asarray(self.frames_per_source)[self.src[used]]
            if ((self.frame[used] < 0) | (self.frame[used] >= limit)).any():
                raise ValueError("recipe table names a frame position outside its source")
        return hwc  # type: ignore[return-value]


def normalization(mean: Sequence[float] | float | None, std: Sequence[float] | float | None,
                  C: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``mean`` and ``inv_std = 1/std`` of length C (the kernel's exact operands)."""
    if (mean is None or std is None) and C != len(DEFAULT_MEAN):
        raise ValueError(f"frames have {C} channels: give mean and std explicitly (defaults are for RGB)")
    mean = DEFAULT_MEAN if mean is None else mean
    std = DEFAULT_STD if std is None else std
    try:
        m = np.broadcast_to(np.asarray(mean, dtype=np.float32), (C,))
        s = np.broadcast_to(np.asarray(std, dtype=np.float32), (C,))
    except ValueError:
        raise ValueError(f"mean ({mean}) and std ({std}) must have 1 or {C} values") from None
    if not np.all(np.isfinite(s)) or np.any(s == 0):
        raise ValueError(f"std ({s.tolist()}) must be finite and non-zero")
    return np.ascontiguousarray(m), np.ascontiguousarray(np.float32(1.0) / s)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even (NaN: the top bits, quieted)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)  # wraps only for NaN
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        r[nan] = ((u[nan] >> 16) | np.uint32(0x40)).astype(np.uint16)
    return r


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _torch_if_loaded() -> Any:
    """PyTorch, if this process has already imported it (never imported here: ``synthesis`` stays a
    NumPy module)."""
    return sys.modules.get("torch")


TORCH_CHUNK = 16384  # elements per PyTorch conversion call: under its parallel grain, so one thread


def _store(val: np.ndarray, dest: np.ndarray, dtype: "OutDType") -> None:
    """Write float32 ``val`` (C, H, W) into ``dest`` (C, H, W view of the output, contiguous planes)
    as float16 (IEEE round-to-nearest-even: NumPy's ``astype``) or bfloat16 bits (:func:`bf16_bits`).
    Where PyTorch is already loaded, its vectorized conversions do the same for finite values (the
    same IEEE rounding; tests check it bit for bit) about 20x faster than NumPy's float16 cast, in
    chunks small enough to stay on this thread; a frame holding a NaN takes the NumPy route, so
    the bits never depend on whether PyTorch is there."""
    torch = _torch_if_loaded()
    if torch is not None and not np.isnan(val).any():
        to16 = dtype is OutDType.FLOAT16
        for c in range(val.shape[0]):
            a = torch.from_numpy(val[c]).view(-1)
            b = torch.from_numpy(dest[c]).view(-1)
            if not to16:
                b = b.view(torch.bfloat16)
            for i in range(0, a.numel(), TORCH_CHUNK):
                b[i:i + TORCH_CHUNK].copy_(a[i:i + TORCH_CHUNK])
        return
    if dtype is OutDType.FLOAT16:
        with np.errstate(over="ignore"):  # overflow to inf is the defined result
            dest[...] = val
    else:
        dest[...] = bf16_bits(val)


def synthesize_reference(sources: Sequence[np.ndarray], tables: RecipeTables, *,
                         mean: Any = None, std: Any = None, dtype: OutDType | str = OutDType.FLOAT32,
                         layout: Layout | str = Layout.NCTHW) -> np.ndarray:
    """The NumPy definition of the fused kernel (same arguments as :func:`synthesize`).

    Per output frame (n, t), in float32 and in the kernel's order: ``acc = 0``, then
    ``acc = acc + w_k * x_k`` for each used term (the uint8 pixel converted exactly, one rounding
    for the product and one for the sum: NumPy never fuses them), then ``(acc - mean) * inv_std``
    (or ``floor(acc + 0.5)`` clamped, for uint8) and the conversion. Vectorized over the pixels of
    one frame (C, H, W planes, written straight into the output layout); nothing is float64."""
    dtype, layout = OutDType.parse(dtype), Layout.parse(layout)
    H, W, C = tables.validate([np.shape(s) for s in sources])
    N, T, K = tables.N, tables.T, tables.K
    out = np.empty(layout.shape(N, T, H, W, C), dtype.storage)
    acc = np.empty((C, H, W), np.float32)
    term = np.empty((C, H, W), np.float32)
    if dtype is not OutDType.UINT8:
        m, inv = normalization(mean, std, C)
        m, inv = m[:, None, None], inv[:, None, None]
    src, frame, weight = tables.src.tolist(), tables.frame.tolist(), tables.weight
    for n in range(N):
        for t in range(T):
            first = True
            for k in range(K):
                s = src[n][t][k]
                if s < 0:
                    continue
                w = weight[n, t, k]  # np.float32
                pixels = np.asarray(sources[s][frame[n][t][k]]).transpose(2, 0, 1)  # HWC -> CHW view
                if first:
                    np.multiply(pixels, w, out=acc)  # uint8 * float32 -> float32
                    if np.signbit(w):  # 0 + (-0.0) is +0.0: the kernel starts from acc = 0
                        np.add(acc, np.float32(0), out=acc)
                    first = False
                else:
                    np.multiply(pixels, w, out=term)
                    np.add(acc, term, out=acc)
            if first:
                acc.fill(0)
            dest = out[n, :, t] if layout is Layout.NCTHW else out[n, t]  # (C, H, W)
            if dtype is OutDType.UINT8:
                np.add(acc, np.float32(0.5), out=acc)
                np.floor(acc, out=acc)
                np.clip(acc, 0, 255, out=acc)
                dest[...] = acc  # integral values in 0..255: exact
            else:
                np.subtract(acc, m, out=acc)
                if dtype is OutDType.FLOAT32:
                    np.multiply(acc, inv, out=dest)
                else:
                    np.multiply(acc, inv, out=acc)
                    _store(acc, dest, dtype)
    return out


def launch_geometry(N: int, T: int, H: int, W: int, block: int = 256,
                    max_blocks_x: int | None = None,
                    max_blocks_y: int = 65535) -> tuple[int, int, int, int]:
    """(grid x, grid y, grid z, block x): threads walk the pixels of one output frame, one
    (grid y, grid z) cell per output frame ``n*T + t``. Tests lower the caps to exercise the
    grid-stride loop and the z dimension."""
    hw = H * W
    gx = max(1, -(-hw // block))
    if max_blocks_x is not None:
        gx = max(1, min(gx, max_blocks_x))
    frames = N * T
    gy = max(1, min(frames, max_blocks_y))
    gz = -(-frames // gy)
    return gx, gy, gz, block


def is_cupy_array(x: Any) -> bool:
    return type(x).__module__.startswith("cupy")


def synthesize(sources: Sequence[Any], tables: RecipeTables, *, mean: Any = None, std: Any = None,
               dtype: OutDType | str = OutDType.FLOAT32, layout: Layout | str = Layout.NCTHW,
               out: Any = None) -> Any:
    """Render a batch. CuPy sources run the fused CUDA kernel on their device (one launch);
    NumPy sources run the reference. Same values either way (see module docstring)."""
    if len(sources) == 0:
        raise ValueError("no sources given")
    if is_cupy_array(sources[0]):
        from .kernel_cupy import synthesize_cupy

        return synthesize_cupy(sources, tables, mean=mean, std=std, dtype=dtype, layout=layout, out=out)
    if out is not None:
        raise ValueError("out= is only supported on the GPU path")
    return synthesize_reference(sources, tables, mean=mean, std=std, dtype=dtype, layout=layout)


__all__ = [
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "Layout",
    "OutDType",
    "RecipeTables",
    "bf16_bits",
    "bf16_to_float32",
    "launch_geometry",
    "normalization",
    "synthesize",
    "synthesize_reference",
]
