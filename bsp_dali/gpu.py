"""What this machine offers bsp-dali, asked once, and lazy access to the GPU stack.

One answer each, shared by every part of the package (the trainer, the iterator, the commands):

* :func:`cuda_device_count` / :func:`cuda_available`: the CUDA devices bsp-dali can use, the ones
  PyTorch sees (``CUDA_VISIBLE_DEVICES`` honoured), provided CuPy, which runs the synthesis kernel,
  is installed too (else 0: the batch could not be synthesized on the device the model trains on).
  The trainer counts its processes with it; the iterator's ``device="auto"`` picks with it.
* :func:`dali_available`: NVIDIA DALI imports (GPU decoding; VP8/VP9/MJPEG on the CPU).

``import bsp_dali`` imports none of PyTorch, CuPy and DALI; these functions import them on their
first call, and :func:`import_cupy` / :func:`import_dali` fail with an error that says how to
install what is missing (STYLE.md, 9).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install the GPU extra: pip install 'bsp-dali[cu13]' (CUDA 13) or 'bsp-dali[cu12]' (CUDA 12)"
)


class GPUUnavailableError(RuntimeError):
    """CuPy/DALI is missing, or no CUDA device is usable."""


@functools.lru_cache(maxsize=None)
def importable(module: str) -> bool:
    """Whether ``module`` imports (any failure counts as no: a broken install is not usable)."""
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 - a broken install raises anything
        return False


@functools.lru_cache(maxsize=1)
def _torch_device_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - any failure means "no usable GPU"
        return 0


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """The CUDA devices this process can use for bsp-dali: PyTorch's count when CuPy imports too,
    else 0 (see the module docstring)."""
    n = _torch_device_count()
    if n and not importable("cupy"):
        log.warning("%d CUDA device(s) visible, but CuPy is not installed: bsp-dali runs on the CPU (%s)",
                    n, INSTALL_HINT)
        return 0
    return n


def cuda_available() -> bool:
    """True when bsp-dali can run on a CUDA device (:func:`cuda_device_count` > 0)."""
    return cuda_device_count() > 0


def no_gpu_reason() -> str:
    """Why :func:`cuda_available` is False, in words."""
    n = _torch_device_count()
    if n and not importable("cupy"):
        return f"{n} CUDA device(s) are visible but CuPy is not installed ({INSTALL_HINT})"
    return "PyTorch sees no CUDA device (a CPU build of PyTorch, no driver, or CUDA_VISIBLE_DEVICES empty)"


def current_cuda_device() -> int:
    """PyTorch's current CUDA device of this thread (``torch.cuda.set_device``)."""
    import torch

    return int(torch.cuda.current_device())


def dali_available() -> bool:
    """True when NVIDIA DALI imports."""
    return importable("nvidia.dali")


def import_cupy() -> Any:
    try:
        import cupy
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise GPUUnavailableError(f"CuPy is not installed ({e}); {INSTALL_HINT}") from None
    return cupy


def import_dali() -> Any:
    try:
        import nvidia.dali as dali
    except ImportError as e:
        raise GPUUnavailableError(
            f"NVIDIA DALI is not installed ({e}); install 'bsp-dali[cu13]' (GPU) or 'bsp-dali[dali]' (CPU)"
        ) from None
    return dali


def resolve_device(device: str) -> str:
    """``auto`` -> ``gpu`` when a CUDA device is usable (:func:`cuda_available`), else ``cpu``;
    ``gpu`` without one fails, saying why."""
    device = str(device).lower()
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device ({device!r}) must be auto, cpu or gpu")
    if device == "auto":
        return "gpu" if cuda_available() else "cpu"
    if device == "gpu" and not cuda_available():
        raise GPUUnavailableError(f"the GPU was asked for but none is usable: {no_gpu_reason()}")
    return device


def autocast(device: str) -> Callable[[], Any]:
    """A factory of the mixed-precision context: bf16 autocast on the GPU, nothing on the CPU
    (one code path for both, as nanoGPT does)."""
    if device == "gpu":
        import torch

        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


__all__ = ["GPUUnavailableError", "INSTALL_HINT", "autocast", "cuda_available", "cuda_device_count",
           "current_cuda_device", "dali_available", "import_cupy", "import_dali", "importable", "no_gpu_reason",
           "resolve_device"]
