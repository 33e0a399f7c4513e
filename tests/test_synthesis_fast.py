"""The vectorized NumPy reference gives, bit for bit, what the per-term loop it replaced gave, with
and without PyTorch's conversions; those conversions round exactly like NumPy's; and the host build
of the CUDA kernel still agrees with the reference when the PyTorch route is taken."""

import numpy as np
import pytest

from bsp_dali import SynthesisConfig
from bsp_dali.synth import synthesis
from bsp_dali.synth.synthesis import bf16_bits, synthesize_reference
from bsp_dali.synth.tables import Layout, OutDType, RecipeTables, normalization
from kernel_cases import all_cases, compare, hand_tables, plan_batch


def loop_reference(sources, tables, *, mean=None, std=None, dtype=OutDType.FLOAT32, layout=Layout.NCTHW):
    """The reference as it was before it was vectorized (one term at a time over whole frames)."""
    dtype, layout = OutDType.parse(dtype), Layout.parse(layout)
    H, W, C = tables.validate([np.shape(s) for s in sources])
    N, T, K = tables.N, tables.T, tables.K
    acc = np.zeros((N, T, H, W, C), dtype=np.float32)
    for n in range(N):
        for t in range(T):
            for k in range(K):
                s = int(tables.src[n, t, k])
                if s < 0:
                    continue
                pixels = np.asarray(sources[s][int(tables.frame[n, t, k])], dtype=np.float32)
                acc[n, t] = acc[n, t] + np.float32(tables.weight[n, t, k]) * pixels
    if dtype is OutDType.UINT8:
        out = np.clip(np.floor(acc + np.float32(0.5)), 0, 255).astype(np.uint8)
    else:
        m, inv = normalization(mean, std, C)
        val = (acc - m) * inv
        if dtype is OutDType.FLOAT32:
            out = val
        elif dtype is OutDType.FLOAT16:
            with np.errstate(over="ignore"):
                out = val.astype(np.float16)
        else:
            u = val.view(np.uint32).astype(np.uint64)
            nan = (u & 0x7FFFFFFF) > 0x7F800000
            r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
            out = np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), r)
    axes = (0, 4, 1, 2, 3) if layout is Layout.NCTHW else (0, 1, 4, 2, 3)
    return np.ascontiguousarray(out.transpose(axes))


@pytest.fixture(params=["numpy", "torch"])
def route(request, monkeypatch):
    """Both routes of the float16/bfloat16 stores: NumPy only, or PyTorch's conversions."""
    if request.param == "torch":
        torch = pytest.importorskip("torch")
        monkeypatch.setattr(synthesis, "_torch_if_loaded", lambda: torch)
    else:
        monkeypatch.setattr(synthesis, "_torch_if_loaded", lambda: None)
    return request.param


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


def test_vectorized_reference_equals_the_loop_on_randomized_plans(route):
    rng = np.random.default_rng(7)
    for trial in range(10):
        tau = int(rng.integers(1, 6))
        cfg = SynthesisConfig(tau=tau, eps_range=(1, int(rng.integers(1, tau + 1))), gammas=(0.4, 0.5, 1.5, 3.0),
                              t_range=(1, 2 * tau - 1), stride=int(rng.integers(1, 3)))
        C = int(rng.integers(1, 5))
        sources, tables, _ = plan_batch(cfg, int(rng.integers(1, 6)), seed=trial, H=int(rng.integers(1, 40)),
                                        W=int(rng.integers(1, 40)), C=C)
        stats = dict(mean=rng.uniform(0, 255, C).tolist(), std=rng.uniform(0.5, 80, C).tolist())
        for dtype in OutDType:
            for layout in Layout:
                want = loop_reference(sources, tables, dtype=dtype, layout=layout, **stats)
                got = synthesize_reference(sources, tables, dtype=dtype, layout=layout, **stats)
                assert same_bits(got, want), (trial, dtype, layout)


def test_vectorized_reference_equals_the_loop_on_the_kernel_cases_and_odd_weights(route):
    vals = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    zero = np.zeros_like(vals)
    odd = hand_tables([[[(0, 0, -0.0)], [(1, 0, -0.25), (0, 0, 0.0)], [(1, 0, -0.0), (1, 0, -0.0)],
                        [(0, 0, np.nan)], [(0, 0, np.inf), (1, 0, 1.0)], []]], [1, 1])
    cases = [(c.sources, c.tables, c.mean, c.std, c.dtypes) for c in all_cases()]
    for mean in (0.0, 5.0):  # mean 0 keeps the sign of a zero: -0.0 and +0.0 stay apart
        cases.append(([vals, zero], odd, [mean], [1.0], tuple(OutDType)))
    for sources, tables, mean, std, dtypes in cases:
        for dtype in dtypes:
            for layout in Layout:
                kw = dict(mean=mean, std=std, dtype=dtype, layout=layout)
                with np.errstate(invalid="ignore"):
                    want = loop_reference(sources, tables, **kw)
                    got = synthesize_reference(sources, tables, **kw)
                if dtype is OutDType.UINT8 and not np.isfinite(tables.weight).all():
                    continue  # NaN/inf to uint8 is undefined in C, in NumPy and in the kernel alike
                assert same_bits(got, want), (dtype, layout, mean)


def _patterns() -> np.ndarray:
    """float32 bit patterns that exercise every rounding decision of a float16/bfloat16 conversion:
    every sign, exponent and top mantissa bits, with low bits at and around the rounding points."""
    high = np.arange(1 << 19, dtype=np.uint32) << 13  # sign, exponent, top 10 mantissa bits
    low = np.array([0, 1, 0x7FF, 0xFFF, 0x1000, 0x1001, 0x17FF, 0x1FFF], np.uint32)
    u = (high[:, None] | low[None, :]).reshape(-1)
    for shift in (0, 3):  # bfloat16 rounds at bit 16: move the low patterns there too
        u = np.concatenate([u, (high[:, None] | (low[None, :] << (3 + shift))).reshape(-1)])
    return u.view(np.float32)


@pytest.mark.parametrize("dtype", [OutDType.FLOAT16, OutDType.BFLOAT16])
def test_pytorch_conversions_round_exactly_like_numpy(dtype, monkeypatch):
    torch = pytest.importorskip("torch")
    f = _patterns()
    f = f[~np.isnan(f)]  # NaN frames take the NumPy route
    pad = (-len(f)) % 3
    val = np.concatenate([f, np.zeros(pad, np.float32)]).reshape(3, 1, -1)
    with np.errstate(over="ignore"):
        want = val.astype(np.float16) if dtype is OutDType.FLOAT16 else bf16_bits(val)
    got = np.empty_like(want)
    monkeypatch.setattr(synthesis, "_torch_if_loaded", lambda: torch)
    synthesis._store(val, got, dtype)
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))


def test_a_frame_with_nan_takes_the_numpy_route(monkeypatch):
    calls = []

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            raise AssertionError("PyTorch must not be used for a frame holding a NaN")

    monkeypatch.setattr(synthesis, "_torch_if_loaded", lambda: Spy())
    val = np.array([1.0, np.nan, 3.0], np.float32).reshape(1, 1, 3)
    out = np.empty((1, 1, 3), np.float16)
    synthesis._store(val, out, OutDType.FLOAT16)
    assert np.isnan(out[0, 0, 1]) and out[0, 0, 0] == 1 and not calls


def test_host_kernel_agrees_with_the_reference_on_the_pytorch_route(monkeypatch):
    torch = pytest.importorskip("torch")
    from bsp_dali.synth import kernel_host

    if kernel_host.find_compiler() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setattr(synthesis, "_torch_if_loaded", lambda: torch)
    lib = kernel_host.load()
    assert compare(lambda *a, **k: kernel_host.synthesize_host(*a, lib=lib, **k)) == []


def test_pytorch_route_is_taken_only_when_pytorch_is_already_loaded():
    import sys

    assert synthesis._torch_if_loaded() is sys.modules.get("torch")
    index_free = RecipeTables(np.zeros((1, 1, 1), np.int32), np.zeros((1, 1, 1), np.int32),
                              np.ones((1, 1, 1), np.float32), (1,))
    out = synthesize_reference([np.full((1, 2, 2, 3), 9, np.uint8)], index_free, dtype="float16", mean=0, std=1)
    assert out.dtype == np.float16 and (out == 9).all()
