"""The NumPy reference against the recipe semantics of BSP-METHOD.md, applied independently."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bsp_dali import Layout, OutDType, Planner, RecipeTables, SynthesisConfig, synthesize
from bsp_dali.data.demo import DemoReader, demo_index
from bsp_dali.synth.synthesis import bf16_bits, bf16_to_float32
from bsp_dali.synth.tables import DEFAULT_MEAN, DEFAULT_STD


def render(plans, reader, index):
    return [reader.read(index.videos[s.video], fr) for p in plans for s, fr in zip(p.sources, p.frames)]


def apply_recipe(plan, reader, index):
    """Output frames straight from the recipe JSON, decoding each term's frame on its own."""
    obj = plan.to_json()
    out = []
    for terms in obj["recipe"]:
        acc = 0.0
        for slot, frame, w in terms:
            video = index.videos[plan.sources[slot].video]
            acc = acc + w * reader.read(video, [frame])[0].astype(np.float64)
        out.append(acc)
    return np.stack(out)  # (T, H, W, C) float64


def test_reference_is_the_recipe_applied_to_decoded_frames():
    index = demo_index()
    reader = DemoReader(12, 10)
    plans = Planner(index, SynthesisConfig(eps_range=(1, 4)), seed=5).plan_many(range(12))
    sources, tables = render(plans, reader, index), RecipeTables.from_plans(plans)
    f32 = synthesize(sources, tables)  # NCTHW float32
    u8 = synthesize(sources, tables, dtype="uint8", layout="NTCHW")
    mean, std = np.array(DEFAULT_MEAN), np.array(DEFAULT_STD)
    for n, plan in enumerate(plans):
        want = apply_recipe(plan, reader, index)
        got = f32[n].transpose(1, 2, 3, 0) * std + mean  # C,T,H,W -> T,H,W,C, back to pixels
        assert np.allclose(got, want, atol=1e-3)
        assert np.abs(u8[n].transpose(0, 2, 3, 1).astype(float) - want).max() <= 0.5 + 1e-4


def test_layouts_hold_the_same_values():
    index = demo_index()
    plans = Planner(index, seed=1).plan_many(range(4))
    sources, tables = render(plans, DemoReader(6, 5), index), RecipeTables.from_plans(plans)
    a = synthesize(sources, tables, layout=Layout.NCTHW)
    b = synthesize(sources, tables, layout=Layout.NTCHW)
    assert a.shape == (4, 3, 8, 6, 5) and b.shape == (4, 8, 3, 6, 5)
    assert np.array_equal(a, b.transpose(0, 2, 1, 3, 4))
    h = synthesize(sources, tables, dtype=OutDType.FLOAT16)
    assert h.dtype == np.float16 and np.array_equal(h, a.astype(np.float16))
    bf = synthesize(sources, tables, dtype="bfloat16")
    assert bf.dtype == np.uint16 and np.allclose(bf16_to_float32(bf), a, rtol=2**-8, atol=1e-6)


@settings(max_examples=400, deadline=None)
@given(st.floats(min_value=-2**127, max_value=2**127, width=32))
def test_bf16_rounding_is_nearest_even(x):
    x32 = np.float32(x)
    bits = int(bf16_bits(np.array([x32]))[0])
    got = float(bf16_to_float32(np.array([bits], np.uint16))[0])
    # candidates: the two bfloat16 values around x (truncation and the next one up in magnitude)
    lo = int(np.array([x32]).view(np.uint32)[0]) >> 16
    cands = [lo, lo + 1]
    vals = [float(bf16_to_float32(np.array([c & 0xFFFF], np.uint16))[0]) for c in cands]
    errs = [abs(v - float(x32)) for v in vals]
    best = min(errs)
    assert abs(got - float(x32)) == best
    if errs[0] == errs[1]:
        assert bits % 2 == 0  # a tie goes to the even pattern


def test_bf16_special_values():
    x = np.array([1.0, -2.0, 0.0, np.inf, -np.inf, 3.4e38, np.nan], np.float32)
    bits = bf16_bits(x)
    assert bits[:6].tolist() == [0x3F80, 0xC000, 0, 0x7F80, 0xFF80, 0x7F80]  # 3.4e38 overflows
    assert np.isnan(bf16_to_float32(bits[6:]))[0]


def test_bad_inputs_are_named():
    index = demo_index()
    plans = Planner(index, seed=1).plan_many(range(2))
    sources, tables = render(plans, DemoReader(6, 5), index), RecipeTables.from_plans(plans)
    with pytest.raises(ValueError, match="sources but"):
        synthesize(sources[:-1], tables)
    short = list(sources)
    short[0] = short[0][:1]
    with pytest.raises(ValueError, match="source 0 has 1 frames"):
        synthesize(short, tables)
    odd = list(sources)
    odd[1] = np.zeros((odd[1].shape[0], 7, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="source 1 has frame size"):
        synthesize(odd, tables)
    with pytest.raises(ValueError, match="unknown output dtype"):
        synthesize(sources, tables, dtype="int7")
    with pytest.raises(ValueError, match="unknown layout"):
        synthesize(sources, tables, layout="NHWC")
    with pytest.raises(ValueError, match="std"):
        synthesize(sources, tables, std=[0, 1, 1])
    with pytest.raises(ValueError, match="same T"):
        RecipeTables.from_plans(plans + Planner(index, SynthesisConfig(tau=2)).plan_many([0]))
