"""A stand-in for the few CuPy calls of the kernel launcher, on the CPU.

"Device" arrays are NumPy arrays whose ``.data.ptr`` is their host address, and ``RawModule``
compiles nothing: its kernels run the host build of the same CUDA source (``kernel_host``), called
with the launcher's arguments converted one by one (a device array -> its address, ``np.int32`` ->
int, ``np.int64`` -> long long). So the launcher's packing, offsets, argument order, strides and
``out=`` are checked against the reference with the real kernel code, on a machine without a GPU.
What it cannot check: CUDA streams, NVRTC, real device memory.
"""

from __future__ import annotations

import ctypes
import types

import numpy as np

from bsp_dali.synth import kernel_host
from bsp_dali.synth.kernel_source import kernel_source


class _Ptr:
    def __init__(self, ptr: int):
        self.ptr = ptr


class FakeArray(np.ndarray):
    """A NumPy array that answers ``.data.ptr`` like a CuPy array."""

    @property
    def data(self):  # noqa: D401 - CuPy's MemoryPointer stand-in
        return _Ptr(self.ctypes.data)


def asarray(a, dtype=None):
    return np.array(a, dtype=dtype, copy=True).view(FakeArray)


def empty(shape, dtype=np.float32):
    return np.empty(shape, dtype=dtype).view(FakeArray)


class _Kernel:
    def __init__(self, name: str, lib):
        self.name, self.lib, self.calls = name, lib, []

    def __call__(self, grid, block, args):
        assert len(grid) == 3 and len(block) == 3 and block[1:] == (1, 1)
        conv = []
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                if not isinstance(a, FakeArray):
                    raise TypeError(f"kernel argument {i} is a host NumPy array, not a device array")
                conv.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.int32):
                conv.append(ctypes.c_int(int(a)))
            elif isinstance(a, np.int64):
                conv.append(ctypes.c_longlong(int(a)))
            else:
                raise TypeError(f"kernel argument {i} has type {type(a).__name__}")
        assert len(conv) == 18, len(conv)  # 7 pointers, N T H W C K, 5 strides
        self.calls.append(args)
        fn = getattr(self.lib, "host_" + self.name)
        fn.restype = None
        fn(*(ctypes.c_uint(v) for v in (*grid, block[0])), *conv)


class _RawModule:
    def __init__(self, code: str, options=()):
        assert code == kernel_source(), "the launcher must compile kernels/bsp_synth.cu"
        self.lib = kernel_host.load()

    def get_function(self, name: str) -> _Kernel:
        return _Kernel(name, self.lib)


class _Stream:
    def synchronize(self) -> None:
        pass


class _Device:
    def __init__(self, index: int | None = None):
        self.id = 0 if index is None else index


def make() -> types.ModuleType:
    cp = types.ModuleType("fake_cupy")
    cp.asarray, cp.empty, cp.ndarray, cp.uint8 = asarray, empty, FakeArray, np.uint8
    cp.RawModule = _RawModule
    cp.cuda = types.SimpleNamespace(Device=_Device, get_current_stream=_Stream)
    return cp
