"""The CuPy launcher of the fused synthesis kernel (``kernels/bsp_synth.cu``).

Sources are device arrays (FHWC uint8, e.g. DALI's decoded and resized frames); the output is
written once, in place, in the training layout: one kernel launch per batch, on CuPy's current
stream. The per-batch operands (the sources' addresses and the recipe tables, a few kilobytes) are
packed into one host buffer (:class:`~bsp_dali.synth.tables.TableLayout`) and copied to the device
in ONE host-to-device copy; ``mean`` and ``1/std`` are uploaded once per device and value.

Where the host buffer and the device buffer come from is a :class:`Staging`'s business: the
default (:class:`PageableStaging`) packs into ordinary host memory and lets CuPy copy it; the
iterator's (``bsp_dali.synth.torch_interop.TorchStaging``) uses pinned memory and device memory
from PyTorch's allocators.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..gpu import import_cupy
from .kernel_source import kernel_source
from .tables import Layout, OutDType, RecipeTables, TableLayout, launch_geometry, normalization

NVRTC_OPTIONS = ("--std=c++14",)
KERNEL_NAMES = {
    OutDType.FLOAT32: "bsp_synth_f32",
    OutDType.FLOAT16: "bsp_synth_f16",
    OutDType.BFLOAT16: "bsp_synth_bf16",
    OutDType.UINT8: "bsp_synth_u8",
}


class Staging(Protocol):
    """Where the launcher's operands live on their way to the device."""

    def upload(self, nbytes: int, fill: Callable[[np.ndarray], None]) -> Any:
        """A device uint8 array (CuPy) of ``nbytes`` holding what ``fill`` wrote into a host
        buffer (1-D uint8 NumPy) of that size: one host-to-device copy, ordered on CuPy's current
        stream before anything launched on it afterwards."""

    def constants(self, values: np.ndarray) -> Any:
        """A device float32 array (CuPy) holding ``values``, readable from any stream; the same
        array for the same values on the same device (uploaded once)."""


class PageableStaging:
    """The default staging: the packed operands in ordinary (pageable) host memory, copied by CuPy
    on its current stream; constants cached per device and value."""

    def upload(self, nbytes: int, fill: Callable[[np.ndarray], None]) -> Any:
        cp = import_cupy()
        host = np.empty(nbytes, dtype=np.uint8)
        fill(host)
        return cp.asarray(host)  # a pageable source: the host buffer may go once this returns

    def constants(self, values: np.ndarray) -> Any:
        cp = import_cupy()
        return _device_constants(cp.cuda.Device().id, np.ascontiguousarray(values, dtype=np.float32).tobytes())


@functools.lru_cache(maxsize=64)
def _device_constants(device_id: int, raw: bytes) -> Any:
    cp = import_cupy()
    arr = cp.asarray(np.frombuffer(raw, dtype=np.float32))
    cp.cuda.get_current_stream().synchronize()  # uploaded before any stream may read it
    return arr


DEFAULT_STAGING = PageableStaging()


@functools.lru_cache(maxsize=None)
def _kernel(name: str, device_id: int) -> Any:
    cp = import_cupy()
    module = cp.RawModule(code=kernel_source(), options=NVRTC_OPTIONS)
    return module.get_function(name)


def synthesize_cupy(sources: Sequence[Any], tables: RecipeTables, *, mean: Any = None,
                    std: Any = None, dtype: OutDType | str = OutDType.FLOAT32,
                    layout: Layout | str = Layout.NCTHW, out: Any = None,
                    staging: Staging | None = None) -> Any:
    """Same contract as :func:`bsp_dali.synth.synthesis.synthesize_reference`, on the current
    device and stream. ``out``, if given, must be a C-contiguous CuPy array of the result's shape
    and storage dtype (e.g. a view of a PyTorch tensor); ``staging`` says where the per-batch
    operands are staged (default: :class:`PageableStaging`)."""
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
    staging = staging or DEFAULT_STAGING
    norm = staging.constants(np.concatenate(normalization(mean, std, C)))  # mean[C], then 1/std[C]
    packed = TableLayout.of(len(sources), tables)
    ptrs = [int(a.data.ptr) for a in sources]
    buf = staging.upload(packed.nbytes, lambda host: packed.pack(tables, ptrs, host))
    src_ptrs, term_src, term_frame, term_w = packed.views(buf)
    args = (
        src_ptrs, term_src, term_frame, term_w, norm[:C], norm[C:], out,
        np.int32(N), np.int32(T), np.int32(H), np.int32(W), np.int32(C), np.int32(K),
        *(np.int64(v) for v in layout.strides(N, T, H, W, C)),
    )
    gx, gy, gz, bx = launch_geometry(N, T, H, W)
    kernel = _kernel(KERNEL_NAMES[dtype], cp.cuda.Device().id)
    kernel((gx, gy, gz), (bx, 1, 1), args)
    return out


__all__ = ["DEFAULT_STAGING", "KERNEL_NAMES", "PageableStaging", "Staging", "synthesize_cupy"]
