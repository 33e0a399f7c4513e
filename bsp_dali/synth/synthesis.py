"""Rendering a batch: the backend switch and the NumPy reference.

The synthesis stage is a deterministic function of its inputs (STYLE.md, 2):

* ``sources``: one decoded stack per source of the batch, FHWC uint8 (NumPy or CuPy), all with
  the same H, W, C (a decode window, or the planned frames of one slot);
* ``tables``: :class:`~bsp_dali.synth.tables.RecipeTables`, for every output frame ``(n, t)`` up
  to ``K`` terms ``(source id, frame position, weight)``;

and returns the batch in the training layout (NCTHW by default, NTCHW on request) as float32,
float16, bfloat16 (returned as uint16 bit patterns, see :func:`bsp_dali.torch_view`) or uint8
(previews: rounded blend, no normalisation).

``synthesize_reference`` defines the semantics; the CUDA kernel in ``kernels/bsp_synth.cu``
computes the same values bit for bit (float32 products and sums without FMA contraction).
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np

from .tables import Layout, OutDType, RecipeTables, normalization


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
    "bf16_bits",
    "bf16_to_float32",
    "synthesize",
    "synthesize_reference",
]
