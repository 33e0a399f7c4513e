"""The CUDA source itself, compiled for the CPU through kernels/host_shim.h, against the reference."""

import shutil
import subprocess

import numpy as np
import pytest

from bsp_dali import SynthesisConfig
from bsp_dali.synth import kernel_host
from bsp_dali.synth.kernel_source import kernel_dir
from bsp_dali.synth.synthesis import synthesize_reference
from bsp_dali.synth.tables import Layout, OutDType
from kernel_cases import all_cases, compare, plan_batch

needs_cxx = pytest.mark.skipif(kernel_host.find_compiler() is None, reason="no C++ compiler")


@needs_cxx
def test_host_build_of_kernel_matches_reference_bit_for_bit():
    lib = kernel_host.load()
    problems = compare(lambda *a, **k: kernel_host.synthesize_host(*a, lib=lib, **k))
    assert problems == []


@needs_cxx
def test_host_build_randomized_plans():
    lib = kernel_host.load()
    rng = np.random.default_rng(123)
    for trial in range(12):
        tau = int(rng.integers(1, 6))
        eps_hi = int(rng.integers(1, tau + 1))
        cfg = SynthesisConfig(tau=tau, eps_range=(1, eps_hi), gammas=(0.4, 0.5, 1.5, 3.0),
                              t_range=(1, 2 * tau - 1), stride=int(rng.integers(1, 3)))
        H, W = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        C = int(rng.integers(1, 5))
        sources, tables, _ = plan_batch(cfg, int(rng.integers(1, 6)), seed=trial, H=H, W=W, C=C)
        stats = dict(mean=rng.uniform(0, 255, C).tolist(), std=rng.uniform(1, 80, C).tolist())
        for dtype in OutDType:
            layout = Layout.NCTHW if trial % 2 else Layout.NTCHW
            want = kernel_host.synthesize_host(sources, tables, dtype=dtype, layout=layout, lib=lib, **stats,
                                               block=int(rng.integers(1, 64)),
                                               max_blocks_x=int(rng.integers(1, 4)))
            ref = synthesize_reference(sources, tables, dtype=dtype, layout=layout, **stats)
            assert np.array_equal(want.view(np.uint8), ref.view(np.uint8)), (trial, dtype)


@needs_cxx
def test_cases_cover_the_edge_cases_the_issue_names():
    names = {c.name for c in all_cases()}
    assert {"eps-equals-tau", "speed-repeats-and-skips", "T2-odd", "grid-stride-and-z"} <= names
    # the cases really contain repeats (gamma < 1) and every output dtype
    case = next(c for c in all_cases() if c.name == "speed-repeats-and-skips")
    frames = case.tables.frame[:, :, 0]
    assert any(len(set(row)) < len(row) for row in frames.tolist())
    assert {d for c in all_cases() for d in c.dtypes} == set(OutDType)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_kernel_compiles_for_sm90_with_nvcc(tmp_path):
    res = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++14", "-cubin", "-o", str(tmp_path / "k.cubin"),
                          str(kernel_dir() / "bsp_synth.cu")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "k.cubin").stat().st_size > 0
