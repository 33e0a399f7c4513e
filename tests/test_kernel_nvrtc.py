"""Compile the kernel source the way CuPy's RawModule does at run time: with NVRTC (no system
headers, no host compiler). Runs wherever an NVRTC library is found (the test extra installs
NVIDIA's nvidia-cuda-nvrtc wheel on x86-64 Linux); no GPU is needed."""

import ctypes
import glob
import os
import sys
from pathlib import Path

import pytest

from bsp_dali.synth.kernel_cupy import KERNEL_NAMES, NVRTC_OPTIONS
from bsp_dali.synth.kernel_source import kernel_source


def find_nvrtc():
    cands = []
    for base in sys.path:
        cands += glob.glob(os.path.join(base, "nvidia", "cu1*", "lib", "libnvrtc.so*"))
        cands += glob.glob(os.path.join(base, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*"))
    cands += glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*")
    cands = [c for c in cands if "builtins" not in c and ".alt." not in c]
    for c in sorted(cands):
        try:
            # NVRTC dlopens its builtins by name: load them first, from the same folder
            for b in sorted(glob.glob(os.path.join(os.path.dirname(c), "libnvrtc-builtins.so*"))):
                ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(c)
        except OSError:
            continue
    return None


NVRTC = find_nvrtc()


def nvrtc_compile(source: str, options: list[str], want_ptx: bool) -> tuple[int, str, bytes]:
    lib = NVRTC
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"bsp_synth.cu", 0, None, None) == 0
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    rc = lib.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    out = b""
    if rc == 0:
        get_size, get = (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX) if want_ptx else (lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN)
        get_size(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        get(prog, buf)
        out = buf.raw
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace"), out


@pytest.mark.skipif(NVRTC is None, reason="no NVRTC library (pip install nvidia-cuda-nvrtc)")
def test_kernel_compiles_with_nvrtc_like_cupy_does():
    rc, log, cubin = nvrtc_compile(kernel_source(), [*NVRTC_OPTIONS, "-arch=sm_90"], want_ptx=False)
    assert rc == 0, log
    assert len(cubin) > 0
    rc, log, ptx = nvrtc_compile(kernel_source(), [*NVRTC_OPTIONS, "-arch=compute_90"], want_ptx=True)
    assert rc == 0, log
    for name in KERNEL_NAMES.values():
        assert f".entry {name}(".encode() in ptx, name
    # no FMA contraction in the blend: the exact semantics depend on it
    assert b"fma.rn.f32" not in ptx


@pytest.mark.skipif(NVRTC is None, reason="no NVRTC library (pip install nvidia-cuda-nvrtc)")
def test_nvrtc_reports_a_broken_kernel(tmp_path):
    broken = kernel_source().replace("float acc[BSP_MAX_C];", "float acc[BSP_MAX_C]")
    rc, log, _ = nvrtc_compile(broken, [*NVRTC_OPTIONS, "-arch=sm_90"], want_ptx=False)
    assert rc != 0 and "error" in log
