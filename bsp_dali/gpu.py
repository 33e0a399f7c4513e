"""Lazy access to the GPU stack. ``import bsp_dali`` never imports CuPy or DALI; these helpers do,
with an error that says how to install them (STYLE.md, 9)."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable

INSTALL_HINT = (
    "install the GPU extra: pip install 'bsp-dali[cu13]' (CUDA 13) or 'bsp-dali[cu12]' (CUDA 12)"
)


class GPUUnavailableError(RuntimeError):
    """CuPy/DALI is missing, or no CUDA device is usable."""


def import_cupy() -> Any:
    try:
        import cupy
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise GPUUnavailableError(f"CuPy is not installed ({e}); {INSTALL_HINT}") from None
    return cupy


def resolve_device(device: str) -> str:
    """``auto`` -> ``gpu`` when a CUDA device is usable, else ``cpu``; ``gpu`` without one fails."""
    device = str(device).lower()
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device ({device!r}) must be auto, cpu or gpu")
    if device == "auto":
        return "gpu" if cuda_available() else "cpu"
    if device == "gpu" and not cuda_available():
        raise GPUUnavailableError("the GPU was asked for but no CUDA device is usable (is CuPy installed?)")
    return device


def autocast(device: str) -> Callable[[], Any]:
    """A factory of the mixed-precision context: bf16 autocast on the GPU, nothing on the CPU
    (one code path for both, as nanoGPT does)."""
    if device == "gpu":
        import torch

        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any failure means "no usable GPU"
        return False
