"""Decode windows: which contiguous stretch of which video each source of a batch is read from.

Each source slot of a plan is decoded as ONE contiguous window of frames ``[start, start+length)``
covering every frame its recipe uses; the kernel reads a source frame ``f`` at position
``f - start`` of its window, so strides and speed changes are index remaps inside the window
(``SamplePlan.frames``/``recipe`` still name the exact source frames: the provenance). The kernel's
tables over a batch's windows are ``bsp_dali.synth.tables.RecipeTables.from_windows``.

A :class:`DecodeUnit` is what a reader decodes once: a window plus the spatial transform (relative
crop box, flip) of the samples that read it, since the reader returns the window already cropped,
resized and flipped. Within a batch, slots of the same video and the same transform whose frames
overlap (or touch) are served by one unit (generic dedupe; with the planner's ``share`` option
samples of a group land in one video with overlapping frames and one transform, so they share).

Readers with a fixed sequence length (DALI's file-list readers take one ``sequence_length`` per
pipeline) get units of exactly ``fixed_length`` frames: ``start = min(first, num_frames - L)``, so
the window stays inside the video. A slot that cannot have one (its video is shorter than ``L``,
or its span is longer: ``extract``'s own plans) gets a variable-length unit, which the decode stage
routes to a variable-length reader (``fn.decoders.video`` in DALI, PyAV on the CPU).

Everything here is pure and cheap (a batch has at most a few dozen slots).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..plan.augment import Box
from ..plan.config import BoundaryType, SynthesisConfig
from ..plan.planner import (SamplePlan, frames_needed_diff_class, frames_needed_diff_speed, frames_needed_plain,
                      frames_needed_same_class)


@dataclass(frozen=True, order=True)
class DecodeUnit:
    """One window of one video, decoded once and transformed once: frames ``start..start+length-1``
    of ``video`` (a position in the index), cropped to the relative ``crop`` box (y0, x0, y1, x1),
    resized to the output size and flipped when ``flip``. A reader returns it as one FHWC uint8
    stack of ``length`` frames."""

    video: int
    start: int
    length: int
    crop: Box
    flip: bool

    def __post_init__(self) -> None:
        if self.start < 0 or self.length < 1:
            raise ValueError(f"window start ({self.start}) must be >= 0 and length ({self.length}) >= 1")

    @property
    def stop(self) -> int:
        return self.start + self.length

    @property
    def frames(self) -> range:
        return range(self.start, self.stop)


@dataclass(frozen=True)
class BatchWindows:
    """The units of a batch in planned order (order of first use, sample by sample, slot by slot)
    and, for every sample ``n`` and slot ``s``, the unit it reads: ``slots[n][s]``. A source frame
    ``f`` of that slot sits at position ``f - units[slots[n][s]].start`` of the unit's stack."""

    units: tuple[DecodeUnit, ...]
    slots: tuple[tuple[int, ...], ...]

    def unit_of(self, sample: int, slot: int) -> tuple[int, int]:
        """(unit id, offset) of a slot: position = frame - offset."""
        u = self.slots[sample][slot]
        return u, self.units[u].start

    @property
    def decoded_frames(self) -> int:
        """Frames the readers return for this batch (before any keyframe overhead)."""
        return sum(u.length for u in self.units)

    def decode_cost(self, num_frames_to_decode: Callable[[DecodeUnit], int]) -> int:
        """Frames a seeking decoder decodes for the batch, keyframe overhead included, given the
        cost of one unit (``lambda u: index.videos[u.video].frames_to_decode(u.start, u.stop - 1)``)."""
        return sum(num_frames_to_decode(u) for u in self.units)


def slot_span(plan: SamplePlan, slot: int) -> tuple[int, int]:
    """(first, last + 1) of the frames a slot's recipe uses."""
    frames = plan.frames[slot]
    return int(frames[0]), int(frames[-1]) + 1


def plan_windows(plans: Sequence[SamplePlan], num_frames: np.ndarray | Sequence[int],
                 fixed_length: int | None = None,
                 fixed_for: Callable[[int], bool] | None = None) -> BatchWindows:
    """The units to decode for a batch, and which unit each (sample, slot) reads.

    ``num_frames[v]``: frame count of video ``v`` (the index's). ``fixed_length``: units of exactly
    this many frames for the videos where ``fixed_for(video)`` is true (all when it is None); slots
    that cannot have one get a variable-length unit (see the module docstring). Without
    ``fixed_length``, units are the unions of overlapping or touching spans.
    """
    if fixed_length is not None and fixed_length < 1:
        raise ValueError(f"fixed_length ({fixed_length}) must be >= 1")
    # group the slots by (video, transform), keeping the order of first use
    groups: dict[tuple[int, Box, bool], list[tuple[int, int, int, int]]] = {}
    for n, plan in enumerate(plans):
        for s, src in enumerate(plan.sources):
            first, stop = slot_span(plan, s)
            groups.setdefault((src.video, plan.crop, plan.flip), []).append((first, stop, n, s))
    assigned: dict[tuple[int, int], DecodeUnit] = {}
    for (video, crop, flip), spans in groups.items():
        n_frames = int(num_frames[video])
        L = fixed_length if fixed_length is not None and (fixed_for is None or fixed_for(video)) else None
        fixed = [sp for sp in spans if L is not None and n_frames >= L and sp[1] - sp[0] <= L]
        variable = [sp for sp in spans if sp not in fixed]
        # fixed: greedy from the left, each window as far left as its first span allows (optimal
        # for covering intervals with windows of one length)
        current: DecodeUnit | None = None
        for first, stop, n, s in sorted(fixed):
            if current is None or stop > current.stop:
                assert L is not None
                current = DecodeUnit(video, min(first, n_frames - L), L, crop, flip)
            assigned[(n, s)] = current
        # variable: unions of overlapping or touching spans
        run: list[tuple[int, int, int, int]] = []
        lo = hi = 0

        def close() -> None:
            unit = DecodeUnit(video, lo, hi - lo, crop, flip)
            for _, _, n_, s_ in run:
                assigned[(n_, s_)] = unit

        for first, stop, n, s in sorted(variable):
            if run and first > hi:
                close()
                run = []
            if not run:
                lo, hi = first, stop
            hi = max(hi, stop)
            run.append((first, stop, n, s))
        if run:
            close()
    # number the units in order of first use
    ids: dict[DecodeUnit, int] = {}
    slots = []
    for n, plan in enumerate(plans):
        row = []
        for s in range(len(plan.sources)):
            unit = assigned[(n, s)]
            row.append(ids.setdefault(unit, len(ids)))
        slots.append(tuple(row))
    return BatchWindows(tuple(ids), tuple(slots))


def longest_span(config: SynthesisConfig) -> int:
    """The longest span of frames one source slot of any plan under ``config`` can need (also the
    action stream's ``(T-1)*stride + 1``)."""
    tau, d = config.tau, config.stride
    spans = [frames_needed_plain(tau, d)]
    for kind in config.types:
        if kind == BoundaryType.DIFF_CLASS:
            spans += [max(frames_needed_diff_class(tau, e, d)) for e in range(config.eps_range[0], config.eps_range[1] + 1)]
        elif kind == BoundaryType.SAME_CLASS:
            spans.append(frames_needed_same_class(tau, d))
        elif kind == BoundaryType.DIFF_SPEED:
            lo, hi = config.resolved_t_range
            spans += [frames_needed_diff_speed(tau, t, g, d) for g in config.gammas for t in range(lo, hi + 1)]
    return max(spans)


def fixed_window_length(config: SynthesisConfig, share: int = 1) -> int:
    """The window length of fixed-length readers: the longest span any plan can need, plus one
    frame when samples share windows (``share > 1``): samples of a group draw their start frames
    from one uniform, and two spans ``s1 <= s2`` drawn so fit in ``s2 + 1`` frames together."""
    if share < 1:
        raise ValueError(f"share ({share}) must be >= 1")
    return longest_span(config) + (1 if share > 1 else 0)


__all__ = ["BatchWindows", "DecodeUnit", "fixed_window_length", "longest_span", "plan_windows", "slot_span"]
