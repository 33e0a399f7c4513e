"""The CuPy path against the reference, wherever a GPU is present (skipped elsewhere).

Every output array is filled with a sentinel before the kernel writes it, twice (all bytes 0x00,
then all 0xFF), so an element the kernel forgets cannot match the reference by the luck of what
the memory held. Not yet run on a GPU in this form.
"""

import numpy as np
import pytest

from bsp_dali.synth.synthesis import synthesize_reference
from bsp_dali.synth.tables import Layout, OutDType, launch_geometry
from kernel_cases import compare, hand_tables

pytestmark = pytest.mark.gpu


def run_into_sentinel(fill: int):
    """A runner for ``compare`` that hands the kernel an output array whose bytes are all ``fill``."""
    import cupy as cp

    from bsp_dali.synth.kernel_cupy import synthesize_cupy

    def run(sources, tables, *, dtype, layout, **kw):
        dtype, layout = OutDType.parse(dtype), Layout.parse(layout)
        H, W, C = sources[0].shape[1:]
        out = cp.empty(layout.shape(tables.N, tables.T, H, W, C), dtype=dtype.storage)
        out.view(cp.uint8).fill(fill)
        got = synthesize_cupy([cp.asarray(s) for s in sources], tables, dtype=dtype, layout=layout, out=out, **kw)
        assert got is out
        return got

    return run


@pytest.mark.parametrize("fill", [0x00, 0xFF])
def test_cupy_kernel_matches_reference_bit_for_bit(fill):
    import cupy as cp

    # the launch settings of a case shape only the host emulation; the GPU uses its own geometry
    assert compare(run_into_sentinel(fill), to_numpy=cp.asnumpy, use_launch=False) == []


@pytest.mark.parametrize("fill", [0x00, 0xFF])
def test_cupy_kernel_covers_every_block_and_every_grid_row(fill):
    """Several blocks per frame (H*W = 323 pixels, 256 threads a block) and more output frames
    (8200 x 8 = 65600) than one grid dimension holds (65535): frames past the first grid row of
    frames go through blockIdx.z. Checked frame by frame against the reference."""
    import cupy as cp

    N, T, H, W, C = 8200, 8, 17, 19, 3
    gx, gy, gz, block = launch_geometry(N, T, H, W)
    assert gx >= 2 and gz >= 2 and gy * gz >= N * T
    rng = np.random.default_rng(0)
    sources = [rng.integers(0, 256, (4, H, W, C), dtype=np.uint8) for _ in range(2)]
    entries = []
    for n in range(N):
        row = []
        for t in range(T):
            w = 0.25 + 0.25 * ((n * T + t) % 3)
            row.append([(0, (n + t) % 4, w), (1, (3 * t + n) % 4, 1.0 - w)])
        entries.append(row)
    tables = hand_tables(entries, [4, 4])
    for dtype in (OutDType.FLOAT32, OutDType.UINT8):
        want = synthesize_reference(sources, tables, dtype=dtype, layout=Layout.NTCHW)
        got = cp.asnumpy(run_into_sentinel(fill)(sources, tables, dtype=dtype, layout=Layout.NTCHW))
        assert got.shape == want.shape == (N, T, C, H, W)
        want = np.ascontiguousarray(want)
        bad = np.flatnonzero((got.view(np.uint8).reshape(N * T, -1) != want.view(np.uint8).reshape(N * T, -1))
                             .any(axis=1))
        assert bad.size == 0, f"{dtype.value}: {bad.size} frames differ, first {bad[:5].tolist()}"


def test_cupy_kernel_writes_into_given_output_and_dispatches():
    import cupy as cp

    from bsp_dali import synthesize
    from kernel_cases import all_cases

    case = all_cases()[0]
    dev = [cp.asarray(s) for s in case.sources]
    ref = synthesize(case.sources, case.tables)
    out = cp.full(ref.shape, np.nan, dtype=cp.float32)  # a sentinel no output value equals
    got = synthesize(dev, case.tables, out=out)
    assert got is out
    assert np.array_equal(cp.asnumpy(out), ref)
