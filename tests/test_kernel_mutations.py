"""Breaking the kernel source (a weight, an index, a bound, a rounding) must make the comparison
fail: this proves the host-build test can catch real kernel bugs."""

import shutil

import pytest

from bsp_dali.synth import kernel_host
from bsp_dali.synth.kernel_source import kernel_dir
from kernel_cases import compare

MUTATIONS = {
    "weight ignored": ("__fmul_rn(wk, (float)px[c])", "__fmul_rn(1.0f, (float)px[c])"),
    "output frame index": ("const int t = (int)(nt % T);", "const int t = (int)((nt + 1) % T);"),
    "pixel bound": ("p < hw; p += step", "p < hw - 1; p += step"),
    "source row index": ("((long long)tf[k] * hw + p) * C", "((long long)tf[k] * hw + (p % W)) * C"),
    "normalisation sign": ("return __fmul_rn(__fsub_rn(acc, mean), inv_std);\n  }\n};\n\nstruct BspStoreF16",
                           "return __fmul_rn(__fadd_rn(acc, mean), inv_std);\n  }\n};\n\nstruct BspStoreF16"),
    "uint8 rounding": ("floorf(__fadd_rn(acc, 0.5f))", "floorf(__fadd_rn(acc, 0.49f))"),
    "f16 ties": ("(rem == 0x1000u && (r & 1u))", "(rem == 0x1000u)"),
    "f16 subnormal": ("unsigned int shift = 126u - e;", "unsigned int shift = 125u - e;"),
    "bf16 ties": ("(x + 0x7fffu + lsb) >> 16", "(x + 0x8000u) >> 16"),
    "second term dropped": ("for (int k = 0; k < K; ++k) {", "for (int k = 0; k < 1; ++k) {"),
}


@pytest.mark.skipif(kernel_host.find_compiler() is None, reason="no C++ compiler")
@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_mutated_kernel_is_caught(name, tmp_path):
    old, new = MUTATIONS[name]
    src = tmp_path / "kernels"
    shutil.copytree(kernel_dir(), src)
    cu = src / "bsp_synth.cu"
    text = cu.read_text()
    assert text.count(old) == 1, f"mutation anchor for {name!r} not found once in the kernel"
    cu.write_text(text.replace(old, new))
    lib = kernel_host.load(kernel_host.build(src_dir=src, cache_dir=tmp_path / "cache"))
    problems = compare(lambda *a, **k: kernel_host.synthesize_host(*a, lib=lib, **k))
    assert problems, f"mutation {name!r} went unnoticed"
