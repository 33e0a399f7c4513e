"""Where the CUDA sources live: ``kernels/`` of the source tree, or ``bsp_dali/_kernels`` when
installed from a wheel (pyproject maps one onto the other)."""

from __future__ import annotations

from pathlib import Path


def kernel_dir() -> Path:
    package = Path(__file__).resolve().parents[1]  # bsp_dali/ (this file is bsp_dali/synth/kernel_source.py)
    for candidate in (package.parent / "kernels", package / "_kernels"):
        if (candidate / "bsp_synth.cu").is_file():
            return candidate
    raise FileNotFoundError(
        "CUDA sources of bsp-dali not found (looked for kernels/bsp_synth.cu beside the package "
        "and bsp_dali/_kernels); reinstall bsp-dali"
    )


def kernel_path(name: str = "bsp_synth.cu") -> Path:
    return kernel_dir() / name


def kernel_source(name: str = "bsp_synth.cu") -> str:
    return kernel_path(name).read_text()
