"""The CUDA kernel source compiled for the CPU (``kernels/host_shim.h``), called through ctypes.

This exists so that a machine without a GPU (CI, a laptop) runs the real ``kernels/bsp_synth.cu``
and compares it with the NumPy reference; it is not a fast path. Needs a C++ compiler (``c++``,
``g++`` or ``$CXX``). Builds are cached by the hash of the sources.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .kernel_source import kernel_dir
from .tables import Layout, OutDType, RecipeTables, TableLayout, launch_geometry, normalization

SOURCES = ("host_shim.cpp", "host_shim.h", "bsp_synth.cu")
CXXFLAGS = ("-O2", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC", "-x", "c++")


class HostBuildError(RuntimeError):
    pass


def find_compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cand and shutil.which(cand):
            return cand
    return None


def build(src_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
    """Compile the host build of the kernel; returns the shared library's path."""
    src_dir = Path(src_dir) if src_dir is not None else kernel_dir()
    cxx = find_compiler()
    if cxx is None:
        raise HostBuildError("no C++ compiler found (set CXX or install g++)")
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((src_dir / name).read_bytes())
    digest.update(" ".join(CXXFLAGS).encode())
    cache_dir = Path(cache_dir or os.environ.get("BSP_DALI_CACHE", Path(tempfile.gettempdir()) / "bsp-dali-cache"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    lib = cache_dir / f"bsp_synth_host_{digest.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    cmd = [cxx, *CXXFLAGS, "-o", str(tmp), str(src_dir / "host_shim.cpp")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise HostBuildError(f"host build of the kernel failed:\n{' '.join(cmd)}\n{res.stderr}")
    os.replace(tmp, lib)
    return lib


_LIBS: dict[Path, Any] = {}


def load(lib_path: Path | None = None) -> Any:
    path = Path(lib_path) if lib_path is not None else build()
    if path not in _LIBS:
        _LIBS[path] = ctypes.CDLL(str(path))
    return _LIBS[path]


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def synthesize_host(sources: Sequence[np.ndarray], tables: RecipeTables, *, mean: Any = None,
                    std: Any = None, dtype: OutDType | str = OutDType.FLOAT32,
                    layout: Layout | str = Layout.NCTHW, max_blocks_x: int | None = None,
                    max_blocks_y: int = 65535, block: int = 256, lib: Any = None) -> np.ndarray:
    """Run the kernel source on the CPU. ``max_blocks_x``, ``max_blocks_y`` and ``block`` shape the
    emulated launch (small values exercise the grid-stride loop and the z dimension)."""
    dtype, layout = OutDType.parse(dtype), Layout.parse(layout)
    srcs = [np.ascontiguousarray(s, dtype=np.uint8) for s in sources]
    H, W, C = tables.validate([s.shape for s in srcs])
    N, T, K = tables.N, tables.T, tables.K
    out = np.empty(layout.shape(N, T, H, W, C), dtype=dtype.storage)
    out.view(np.uint8)[...] = 0xA5  # a sentinel, so an element the kernel never writes shows up
    mean32, inv32 = normalization(mean, std, C)
    # the per-batch operands in one buffer, as the GPU launcher uploads them (the same offsets)
    packed = TableLayout.of(len(srcs), tables)
    buf = np.zeros(packed.nbytes, dtype=np.uint8)
    packed.pack(tables, [s.ctypes.data for s in srcs], buf)
    ptrs, src_t, frm_t, w_t = packed.views(buf)
    gx, gy, gz, bx = launch_geometry(N, T, H, W, block=block, max_blocks_x=max_blocks_x,
                                     max_blocks_y=max_blocks_y)
    lib = lib or load()
    fn = getattr(lib, "host_bsp_synth_" + {"float32": "f32", "float16": "f16", "bfloat16": "bf16",
                                            "uint8": "u8"}[dtype.value])
    fn.restype = None
    fn(ctypes.c_uint(gx), ctypes.c_uint(gy), ctypes.c_uint(gz), ctypes.c_uint(bx),
       _ptr(ptrs), _ptr(src_t), _ptr(frm_t), _ptr(w_t), _ptr(mean32), _ptr(inv32), _ptr(out),
       *(ctypes.c_int(v) for v in (N, T, H, W, C, K)),
       *(ctypes.c_longlong(v) for v in layout.strides(N, T, H, W, C)))
    return out
