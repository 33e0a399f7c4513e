"""The kernel's contract on the host: the one table builder, and the packed upload layout.

The GPU launcher copies the sources' addresses and the recipe tables to the device in ONE buffer
(``TableLayout``); the host build of the kernel reads the same buffer, so the kernel's own code
checks the offsets here (tests/test_kernel_host.py compares it with the reference bit for bit), and
the CuPy launcher runs against a stand-in CuPy that calls that host build. Only a GPU confirms the
real copy, CuPy's views of the device buffer and the launch (tests/test_kernel_gpu.py).
"""

import numpy as np
import pytest

import fake_cupy
from bsp_dali import DatasetIndex, Planner, SynthesisConfig
from bsp_dali.decode.windows import plan_windows
from bsp_dali.plan.planner import plain_plan
from bsp_dali.synth import kernel_cupy, kernel_host
from bsp_dali.synth.tables import PACK_ALIGN, Layout, OutDType, RecipeTables, TableLayout
from kernel_cases import all_cases, compare, plan_batch

needs_cxx = pytest.mark.skipif(kernel_host.find_compiler() is None, reason="no C++ compiler")


def _index(lengths):
    return DatasetIndex.from_lists([f"c{i % 2}/v{i}.mp4" for i in range(len(lengths))],
                                   [f"c{i % 2}" for i in range(len(lengths))], lengths)


# ---------------------------------------------------------------------------------- the one builder
def test_from_plans_and_from_windows_are_the_same_builder_with_another_numbering():
    index = _index([60, 60, 60, 60])
    plans = Planner(index, SynthesisConfig(tau=3), seed=1).plan_many(range(6))
    per_slot = RecipeTables.from_plans(plans)
    windows = plan_windows(plans, index.num_frames)
    per_unit = RecipeTables.from_windows(plans, windows)
    assert per_slot.src.shape == per_unit.src.shape == (6, 6, 2)
    assert np.array_equal(per_slot.weight, per_unit.weight)
    # each term names the same source frame through either numbering
    slot_frames = [f for p in plans for f in p.frames]
    for n, t, k in zip(*np.nonzero(per_slot.src >= 0)):
        a = slot_frames[per_slot.src[n, t, k]][per_slot.frame[n, t, k]]
        u = windows.units[per_unit.src[n, t, k]]
        assert a == u.start + per_unit.frame[n, t, k]
    assert per_unit.frames_per_source == tuple(u.length for u in windows.units)


def test_the_builder_refuses_what_the_kernel_cannot_read():
    index = _index([50, 50])
    plans = [plain_plan(index, 0, [1, 2, 3, 4])]
    with pytest.raises(ValueError, match="at least one plan"):
        RecipeTables.build([], lambda n, s, f: (0, 0), [1])
    with pytest.raises(ValueError, match="outside it"):
        RecipeTables.build(plans, lambda n, s, f: (0, f), [4])  # frame 4 at position 4 of a 4-frame source
    with pytest.raises(ValueError, match="more than K=1"):
        blend = Planner(_index([50] * 4), SynthesisConfig(tau=2, types=("diff_class", "same_class")), seed=0)
        RecipeTables.from_plans(blend.plan_many(range(8)), K=1)
    with pytest.raises(ValueError, match="plans for windows of 1 samples"):
        RecipeTables.from_windows(plans * 2, plan_windows(plans, index.num_frames))


# ---------------------------------------------------------------------------------- the packed layout
@pytest.mark.parametrize("S, N, T, K", [(1, 1, 1, 1), (3, 2, 8, 2), (33, 32, 16, 2), (7, 5, 3, 3)])
def test_the_layout_places_each_array_aligned_and_apart(S, N, T, K):
    tables = RecipeTables(np.zeros((N, T, K), np.int32), np.zeros((N, T, K), np.int32),
                          np.zeros((N, T, K), np.float32), (1,) * S)
    lay = TableLayout.of(S, tables)
    regions = [(lay.src_ptrs, 8 * S), (lay.term_src, 4 * N * T * K), (lay.term_frame, 4 * N * T * K),
               (lay.term_w, 4 * N * T * K)]
    for (a, na), (b, _) in zip(regions, regions[1:]):
        assert a % PACK_ALIGN == 0 and a + na <= b  # aligned, in order, no overlap
    last, size = regions[-1]
    assert last % PACK_ALIGN == 0 and last + size <= lay.nbytes < last + size + PACK_ALIGN


def test_packing_round_trips_against_the_separate_arrays():
    sources, tables, _ = plan_batch(SynthesisConfig(tau=3), 5, seed=3, H=4, W=5)
    ptrs = [s.ctypes.data for s in sources]
    lay = TableLayout.of(len(sources), tables)
    buf = np.full(lay.nbytes + 64, 0xEE, np.uint8)  # a larger, dirty buffer: only the layout's bytes are read
    lay.pack(tables, ptrs, buf)
    got_ptrs, src, frame, weight = lay.views(buf)
    assert got_ptrs.tolist() == ptrs
    assert np.array_equal(src, tables.src.reshape(-1)) and src.dtype == np.int32
    assert np.array_equal(frame, tables.frame.reshape(-1)) and frame.dtype == np.int32
    assert np.array_equal(weight.view(np.uint32), tables.weight.reshape(-1).view(np.uint32))
    assert weight.dtype == np.float32
    with pytest.raises(ValueError, match="source addresses"):
        lay.pack(tables, ptrs[:-1], buf)
    with pytest.raises(ValueError, match="at least"):
        lay.pack(tables, ptrs, np.zeros(lay.nbytes - 1, np.uint8))


@needs_cxx
def test_the_host_build_reads_its_tables_through_the_layout(monkeypatch):
    """The host build takes every table from the packed buffer: offsets that point at the wrong
    array make it disagree with the reference (so a passing comparison vouches for them)."""
    case = all_cases()[0]
    want = kernel_host.synthesize_host(case.sources, case.tables)
    real = TableLayout.views

    def swapped(self, buf):
        ptrs, src, frame, weight = real(self, buf)
        return ptrs, src, src, weight  # term_frame read from term_src's bytes

    monkeypatch.setattr(TableLayout, "views", swapped)
    assert not np.array_equal(kernel_host.synthesize_host(case.sources, case.tables), want)


# ---------------------------------------------------------------------------------- the CuPy launcher
@pytest.fixture()
def cupy_on_cpu(monkeypatch):
    """kernel_cupy with a stand-in CuPy whose kernels run the host build (tests/fake_cupy.py)."""
    cp = fake_cupy.make()
    monkeypatch.setattr(kernel_cupy, "import_cupy", lambda: cp)
    kernel_cupy._kernel.cache_clear()
    kernel_cupy._device_constants.cache_clear()
    yield cp
    kernel_cupy._kernel.cache_clear()
    kernel_cupy._device_constants.cache_clear()


class CountingStaging(kernel_cupy.PageableStaging):
    def __init__(self):
        self.uploads, self.constant_calls = [], 0

    def upload(self, nbytes, fill):
        self.uploads.append(nbytes)
        return super().upload(nbytes, fill)

    def constants(self, values):
        self.constant_calls += 1
        return super().constants(values)


@needs_cxx
def test_the_cupy_launcher_matches_the_reference_through_one_packed_upload(cupy_on_cpu):
    staging = CountingStaging()

    def run(sources, tables, **kw):
        return kernel_cupy.synthesize_cupy([cupy_on_cpu.asarray(s) for s in sources], tables, staging=staging, **kw)

    assert compare(run, use_launch=False) == []
    calls = len(staging.uploads)
    assert calls > 10 and staging.constant_calls == calls  # one upload of tables per batch
    # mean/std: uploaded once per value and device, not per batch
    info = kernel_cupy._device_constants.cache_info()
    assert info.misses == len({(str(c.mean), str(c.std), c.sources[0].shape[-1]) for c in all_cases()})
    assert info.hits == calls - info.misses


@needs_cxx
def test_the_cupy_launcher_writes_into_the_given_output(cupy_on_cpu):
    case = all_cases()[0]
    sources = [cupy_on_cpu.asarray(s) for s in case.sources]
    ref = kernel_host.synthesize_host(case.sources, case.tables, dtype=OutDType.BFLOAT16, layout=Layout.NTCHW)
    out = cupy_on_cpu.empty(ref.shape, np.uint16)
    out[...] = 0xFFFF
    got = kernel_cupy.synthesize_cupy(sources, case.tables, dtype="bfloat16", layout="NTCHW", out=out)
    assert got is out and np.array_equal(np.asarray(out), ref)
    with pytest.raises(ValueError, match="out must be"):
        kernel_cupy.synthesize_cupy(sources, case.tables, dtype="float32", out=out)
