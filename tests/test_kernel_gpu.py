"""The CuPy path against the reference, wherever a GPU is present (skipped elsewhere)."""

import numpy as np
import pytest

from kernel_cases import compare

pytestmark = pytest.mark.gpu


def test_cupy_kernel_matches_reference_bit_for_bit():
    import cupy as cp

    from bsp_dali.kernel_cupy import synthesize_cupy

    def run(sources, tables, **kw):
        return synthesize_cupy([cp.asarray(s) for s in sources], tables, **kw)

    # the launch settings of a case shape only the host emulation; the GPU uses its own geometry
    assert compare(run, to_numpy=cp.asnumpy, use_launch=False) == []


def test_cupy_kernel_writes_into_given_output_and_dispatches():
    import cupy as cp

    from bsp_dali import synthesize
    from kernel_cases import all_cases

    case = all_cases()[0]
    dev = [cp.asarray(s) for s in case.sources]
    ref = synthesize(case.sources, case.tables)
    out = cp.zeros(ref.shape, dtype=cp.float32)
    got = synthesize(dev, case.tables, out=out)
    assert got is out
    assert np.array_equal(cp.asnumpy(out), ref)
