"""Window readers: decode units (``bsp_dali.decode.windows.DecodeUnit``) into transformed stacks.

The interface every backend implements::

    reader.read_windows(units) -> list of (FHWC uint8 stack of ``size``) or BadVideo, one per unit

in the order given: NumPy arrays on the CPU, CuPy arrays on the GPU. A file that fails comes back
as the :class:`~bsp_dali.decode.pyav.BadVideo` of its units (naming the file and the reason); a reader
raises only for programming errors. Readers are deterministic functions of the units.

Backends: :class:`CPUWindowReader` over any frame reader (PyAV with a keyframe seek and one forward
decode per window; the procedural demo videos; stand-ins in tests) in a thread pool;
:class:`~bsp_dali.decode.procreader.ProcessWindowReader`, PyAV in worker processes writing into shared
memory (the CPU's default for real files); and DALI's readers in ``bsp_dali.decode.dali_readers``.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, Sequence

import numpy as np

from ..data.index import BadVideo, DatasetIndex
from ..plan.augment import apply_cpu
from .pyav import FrameReader
from .windows import DecodeUnit

log = logging.getLogger(__name__)

Result = Any  # an FHWC uint8 stack (NumPy or CuPy) or a BadVideo


class WindowReader(Protocol):
    """Decodes units; see the module docstring."""

    description: str

    def read_windows(self, units: Sequence[DecodeUnit]) -> list[Result]:
        ...

    def close(self) -> None:
        ...


def unit_error(index: DatasetIndex, unit: DecodeUnit, reason: str) -> BadVideo:
    return BadVideo(index.resolve(index.videos[unit.video].path), reason)


def decode_unit_cpu(index: DatasetIndex, reader: FrameReader, unit: DecodeUnit, size: tuple[int, int]) -> Result:
    """One unit on the CPU: the window's frames (one seek, one forward decode with PyAV), then the
    crop, resize and flip. A failure comes back as a BadVideo naming the file."""
    try:
        stack = reader.read(index.videos[unit.video], unit.frames)
    except BadVideo as e:
        return e
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
        return unit_error(index, unit, f"{type(e).__name__}: {e}")
    if stack.shape[0] != unit.length:
        return unit_error(index, unit, f"the reader returned {stack.shape[0]} frames for a window of {unit.length}")
    return apply_cpu(stack, unit.crop, unit.flip, size)


class CPUWindowReader:
    """Units decoded by a frame reader (``read(video, frames) -> FHWC``) and transformed with Pillow,
    in a thread pool (PyAV and Pillow release the GIL while they work)."""

    def __init__(self, index: DatasetIndex, reader: FrameReader, size: tuple[int, int], threads: int = 1,
                 description: str = "PyAV (CPU)"):
        if threads < 1:
            raise ValueError(f"threads ({threads}) must be >= 1")
        self.index, self.reader, self.size = index, reader, (int(size[0]), int(size[1]))
        self.threads = int(threads)
        self.description = description
        self._pool: ThreadPoolExecutor | None = None

    def read_windows(self, units: Sequence[DecodeUnit]) -> list[Result]:
        if self.threads == 1 or len(units) <= 1:
            return [decode_unit_cpu(self.index, self.reader, u, self.size) for u in units]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="bsp-read")
        return list(self._pool.map(lambda u: decode_unit_cpu(self.index, self.reader, u, self.size), units))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def check_stack(stack: Any, unit: DecodeUnit, size: tuple[int, int]) -> None:
    """Internal invariant of every reader: FHWC uint8 of the unit's length and the output size."""
    shape = tuple(int(v) for v in stack.shape)
    if shape[:3] != (unit.length, size[0], size[1]) or len(shape) != 4 or np.dtype(stack.dtype) != np.uint8:
        raise AssertionError(f"reader returned {shape} {stack.dtype} for {unit} at size {size}")


__all__ = ["CPUWindowReader", "WindowReader", "check_stack", "decode_unit_cpu", "unit_error"]
