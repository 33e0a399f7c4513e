"""The CuPy launcher of the fused synthesis kernel (``kernels/bsp_synth.cu``).

Sources are device arrays (FHWC uint8, e.g. DALI's decoded and resized frames); the recipe tables
are a few kilobytes copied to the device per batch; the output is written once, in place, in the
training layout. One kernel launch per batch.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from ..gpu import import_cupy
from .kernel_source import kernel_source
from .synthesis import Layout, OutDType, RecipeTables, launch_geometry, normalization

NVRTC_OPTIONS = ("--std=c++14",)
KERNEL_NAMES = {
    OutDType.FLOAT32: "bsp_synth_f32",
    OutDType.FLOAT16: "bsp_synth_f16",
    OutDType.BFLOAT16: "bsp_synth_bf16",
    OutDType.UINT8: "bsp_synth_u8",
}


@functools.lru_cache(maxsize=None)
def _kernel(name: str, device_id: int) -> Any:
    cp = import_cupy()
    module = cp.RawModule(code=kernel_source(), options=NVRTC_OPTIONS)
    return module.get_function(name)


def synthesize_cupy(sources: Sequence[Any], tables: RecipeTables, *, mean: Any = None,
                    std: Any = None, dtype: OutDType | str = OutDType.FLOAT32,
                    layout: Layout | str = Layout.NCTHW, out: Any = None) -> Any:
    """Same contract as :func:`bsp_dali.synth.synthesis.synthesize_reference`, on the current device and
    stream. ``out``, if given, must be a C-contiguous CuPy array of the result's shape and dtype."""
    cp = import_cupy()
    dtype, layout = OutDType.parse(dtype), Layout.parse(layout)
    for s, arr in enumerate(sources):
        if arr.dtype != np.uint8:
            raise ValueError(f"source {s} has dtype {arr.dtype}; decoded frames must be uint8")
        if not arr.flags.c_contiguous:
            raise ValueError(f"source {s} is not C-contiguous (FHWC)")
    H, W, C = tables.validate([tuple(a.shape) for a in sources])
    N, T, K = tables.N, tables.T, tables.K
    shape = layout.shape(N, T, H, W, C)
    if out is None:
        out = cp.empty(shape, dtype=dtype.storage)
    elif tuple(out.shape) != shape or out.dtype != dtype.storage or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {dtype.storage} array of shape {shape}")
    mean32, inv_std32 = normalization(mean, std, C)
    ptrs = cp.asarray(np.array([a.data.ptr for a in sources], dtype=np.uint64))
    args = (
        ptrs,
        cp.asarray(tables.src), cp.asarray(tables.frame), cp.asarray(tables.weight),
        cp.asarray(mean32), cp.asarray(inv_std32), out,
        np.int32(N), np.int32(T), np.int32(H), np.int32(W), np.int32(C), np.int32(K),
        *(np.int64(v) for v in layout.strides(N, T, H, W, C)),
    )
    gx, gy, gz, bx = launch_geometry(N, T, H, W)
    kernel = _kernel(KERNEL_NAMES[dtype], cp.cuda.Device().id)
    kernel((gx, gy, gz), (bx, 1, 1), args)
    return out
