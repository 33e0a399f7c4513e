"""The contract of the synthesis kernel: what it reads and what it writes.

* :class:`RecipeTables`: for every output frame ``(n, t)`` of a batch, up to ``K`` terms
  ``(source id, frame position, weight)``; arrays ``(N, T, K)`` int32 / int32 / float32. One
  builder (:meth:`RecipeTables.build`) serves both ways of numbering the sources: one source per
  (sample, slot) holding exactly the planned frames (:meth:`~RecipeTables.from_plans`), or one
  source per decode window, shared by the slots that read it (:meth:`~RecipeTables.from_windows`).
* :class:`OutDType` and :class:`Layout`: the batch's element type and layout (NCTHW or NTCHW).
* :class:`TableLayout`: where the tables and the sources' addresses lie in the one byte buffer the
  GPU launcher copies to the device per batch (one host-to-device copy instead of one per array);
  the host build of the kernel reads the same buffer, so the CPU tests check the offsets.
* :func:`normalization` (the kernel's exact float32 ``mean`` and ``1/std``) and
  :func:`launch_geometry` (grid and block of one launch).

Both the NumPy reference (``synthesis``) and the launchers (``kernel_cupy``, ``kernel_host``)
import this module; it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..plan.config import ChoiceEnum
from ..plan.planner import SamplePlan

if TYPE_CHECKING:  # the type only: synthesis reads windows through their interface, never imports decode
    from ..decode.windows import BatchWindows

# ImageNet statistics in pixel units (0..255): TSM's torchvision backbones expect them.
DEFAULT_MEAN = (123.675, 116.28, 103.53)
DEFAULT_STD = (58.395, 57.12, 57.375)
MAX_CHANNELS = 4  # BSP_MAX_C in the kernel
TERMS_PER_FRAME = 2  # a blend mixes at most two sources
PACK_ALIGN = 16  # byte alignment of each array in the packed tables


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


Locate = Callable[[int, int, int], "tuple[int, int]"]  # (sample n, slot, source frame) -> (source id, position)


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
    def build(cls, plans: Sequence[SamplePlan], locate: Locate, frames_per_source: Sequence[int],
              K: int = TERMS_PER_FRAME) -> "RecipeTables":
        """Tables for a batch: the term ``(slot, frame, weight)`` of output frame ``t`` of sample
        ``n`` reads position ``p`` of source ``s``, where ``(s, p) = locate(n, slot, frame)``.
        Raises ValueError for an empty batch, plans of different T, more than ``K`` terms, or a
        position outside its source."""
        if not plans:
            raise ValueError("a batch needs at least one plan")
        T = plans[0].T
        if any(p.T != T for p in plans):
            raise ValueError(f"all plans of a batch must have the same T; got {sorted({p.T for p in plans})}")
        counts = tuple(int(c) for c in frames_per_source)
        src = np.full((len(plans), T, K), -1, dtype=np.int32)
        frame = np.zeros((len(plans), T, K), dtype=np.int32)
        weight = np.zeros((len(plans), T, K), dtype=np.float32)
        for n, plan in enumerate(plans):
            for t, terms in enumerate(plan.recipe):
                if len(terms) > K:
                    raise ValueError(f"sample {plan.index}: frame {t} has {len(terms)} terms, more than K={K}")
                for k, (slot, f, w) in enumerate(terms):
                    s, pos = locate(n, slot, f)
                    if not (0 <= s < len(counts) and 0 <= pos < counts[s]):
                        raise ValueError(f"sample {plan.index} slot {slot}: frame {f} maps to position {pos} of "
                                         f"source {s}, outside it")
                    src[n, t, k] = s
                    frame[n, t, k] = pos
                    weight[n, t, k] = w
        return cls(src, frame, weight, counts)

    @classmethod
    def from_plans(cls, plans: Sequence[SamplePlan], K: int = TERMS_PER_FRAME) -> "RecipeTables":
        """Tables over one source per (sample, slot), numbered sample by sample, slot by slot, each
        holding exactly ``plan.frames[slot]`` in order."""
        bases, counts, lookups = [], [], []
        for plan in plans:
            bases.append(len(counts))
            counts.extend(len(f) for f in plan.frames)
            lookups.append([{f: p for p, f in enumerate(fr)} for fr in plan.frames])

        def locate(n: int, slot: int, f: int) -> tuple[int, int]:
            return bases[n] + slot, lookups[n][slot][f]

        return cls.build(plans, locate, counts, K)

    @classmethod
    def from_windows(cls, plans: Sequence[SamplePlan], windows: "BatchWindows",
                     K: int = TERMS_PER_FRAME) -> "RecipeTables":
        """Tables over a batch's decode units (``bsp_dali.decode.windows``): source id = unit id,
        frame position = frame - the unit's start. Several samples (and slots) may read one unit."""
        if len(plans) != len(windows.slots):
            raise ValueError(f"{len(plans)} plans for windows of {len(windows.slots)} samples")

        def locate(n: int, slot: int, f: int) -> tuple[int, int]:
            u, start = windows.unit_of(n, slot)
            return u, f - start

        return cls.build(plans, locate, [u.length for u in windows.units], K)

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


# ---------------------------------------------------------------------------------- one upload per batch
def _aligned(offset: int) -> int:
    return -(-offset // PACK_ALIGN) * PACK_ALIGN


@dataclass(frozen=True)
class TableLayout:
    """Byte offsets of the kernel's per-batch operands in one buffer: the sources' device addresses
    (uint64 ``[S]``), then the terms' source ids (int32 ``[N*T*K]``), frame positions (int32) and
    weights (float32), each at a ``PACK_ALIGN``-byte aligned offset. ``nbytes``: the buffer's size."""

    sources: int
    terms: int
    src_ptrs: int
    term_src: int
    term_frame: int
    term_w: int
    nbytes: int

    @classmethod
    def of(cls, num_sources: int, tables: RecipeTables) -> "TableLayout":
        if num_sources < 1:
            raise ValueError(f"num_sources ({num_sources}) must be >= 1")
        terms = tables.N * tables.T * tables.K
        src_ptrs = 0
        term_src = _aligned(src_ptrs + 8 * num_sources)
        term_frame = _aligned(term_src + 4 * terms)
        term_w = _aligned(term_frame + 4 * terms)
        return cls(num_sources, terms, src_ptrs, term_src, term_frame, term_w, _aligned(term_w + 4 * terms))

    def pack(self, tables: RecipeTables, source_ptrs: Sequence[int], out: np.ndarray) -> None:
        """Write the sources' addresses and the tables into ``out`` (uint8, at least ``nbytes``;
        pinned host memory on the GPU path)."""
        if len(source_ptrs) != self.sources:
            raise ValueError(f"{len(source_ptrs)} source addresses for a layout of {self.sources}")
        if out.dtype != np.uint8 or out.ndim != 1 or out.size < self.nbytes:
            raise ValueError(f"out must be a 1-D uint8 buffer of at least {self.nbytes} bytes")
        ptrs, src, frame, weight = self.views(out)
        ptrs[...] = np.asarray(source_ptrs, dtype=np.uint64)
        src[...] = tables.src.reshape(-1)
        frame[...] = tables.frame.reshape(-1)
        weight[...] = tables.weight.reshape(-1)

    def views(self, buf: Any) -> tuple[Any, Any, Any, Any]:
        """The four arrays inside ``buf`` (a 1-D uint8 NumPy or CuPy array laid out by
        :meth:`pack`): source addresses, term source ids, frame positions, weights (flat, N*T*K)."""
        return (buf[self.src_ptrs:self.src_ptrs + 8 * self.sources].view(np.uint64),
                buf[self.term_src:self.term_src + 4 * self.terms].view(np.int32),
                buf[self.term_frame:self.term_frame + 4 * self.terms].view(np.int32),
                buf[self.term_w:self.term_w + 4 * self.terms].view(np.float32))


# ---------------------------------------------------------------------------------- normalization, launch
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


__all__ = [
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "Layout",
    "OutDType",
    "RecipeTables",
    "TableLayout",
    "launch_geometry",
    "normalization",
]
