"""Window planning: one contiguous window per source, index remaps, dedupe, fixed lengths."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bsp_dali import DatasetIndex, Planner, SynthesisConfig
from bsp_dali.data.demo import DemoReader, demo_index
from bsp_dali.decode.windows import DecodeUnit, fixed_window_length, longest_span, plan_windows
from bsp_dali.plan.augment import SpatialConfig
from bsp_dali.plan.planner import plain_plan
from bsp_dali.synth.synthesis import synthesize_reference
from bsp_dali.synth.tables import RecipeTables

CFG = SynthesisConfig(eps_range=(1, 4), gammas=(0.5, 2.0, 3.0))


def _index(lengths):
    return DatasetIndex.from_lists([f"c{i % 3}/v{i}.mp4" for i in range(len(lengths))],
                                   [f"c{i % 3}" for i in range(len(lengths))], lengths)


def _demo_stacks(index, units):
    reader = DemoReader(16, 16)
    return [reader.read(index.videos[u.video], u.frames) for u in units]


@pytest.mark.parametrize("fixed", [None, "L"])
@pytest.mark.parametrize("share", [1, 3])
def test_kernel_output_from_windows_equals_output_from_the_planned_frames(fixed, share):
    """The index remap: reading each slot's window at position frame - start gives exactly what
    reading the planned frames (the previous layout) gives, for every type and stride."""
    index = demo_index(num_classes=3, videos_per_class=4, min_frames=40, max_frames=70, size=(16, 16))
    reader = DemoReader(16, 16)
    for stride in (1, 2):
        cfg = CFG.with_(stride=stride)
        planner = Planner(index, cfg, seed=5, share=share)
        plans = planner.plan_many(range(24))
        old_stacks = [reader.read(index.videos[s.video], f) for p in plans for s, f in zip(p.sources, p.frames)]
        old = synthesize_reference(old_stacks, RecipeTables.from_plans(plans), dtype="uint8")
        L = fixed_window_length(cfg, share) if fixed else None
        bw = plan_windows(plans, index.num_frames, L)
        new = synthesize_reference(_demo_stacks(index, bw.units), RecipeTables.from_windows(plans, bw), dtype="uint8")
        assert np.array_equal(old, new)
        for n, plan in enumerate(plans):  # every recipe frame lies in its slot's window
            for s, frames in enumerate(plan.frames):
                u = bw.units[bw.slots[n][s]]
                assert u.video == plan.sources[s].video and u.start <= frames[0] and frames[-1] < u.stop
                assert (u.crop, u.flip) == (plan.crop, plan.flip)
                if L is not None:
                    assert u.length == L and u.stop <= index.num_frames[u.video]


def test_identical_and_overlapping_slots_share_a_unit_in_order_of_first_use():
    index = _index([100, 100, 30])
    box = (0.0, 0.0, 1.0, 1.0)
    plans = [plain_plan(index, 1, [50, 51, 52, 53]), plain_plan(index, 0, [10, 11, 12, 13], sample_index=1),
             plain_plan(index, 1, [50, 51, 52, 53], sample_index=2), plain_plan(index, 1, [52, 53, 54, 55], sample_index=3),
             plain_plan(index, 1, [56, 57], sample_index=4), plain_plan(index, 1, [80, 81], sample_index=5),
             plain_plan(index, 1, [50, 51], sample_index=6, flip=True)]
    bw = plan_windows(plans, index.num_frames)
    # variable windows: unions of overlapping or touching spans of one video and one transform
    assert bw.units == (DecodeUnit(1, 50, 8, box, False), DecodeUnit(0, 10, 4, box, False),
                        DecodeUnit(1, 80, 2, box, False), DecodeUnit(1, 50, 2, box, True))
    assert bw.slots == ((0,), (1,), (0,), (0,), (0,), (2,), (3,))
    assert bw.unit_of(3, 0) == (0, 50) and bw.decoded_frames == 16
    # fixed length 6: greedy windows from the left, each as far left as its first span
    bw6 = plan_windows(plans, index.num_frames, 6)
    assert [(u.video, u.start, u.length, u.flip) for u in bw6.units] == [
        (1, 50, 6, False), (0, 10, 6, False), (1, 56, 6, False), (1, 80, 6, False), (1, 50, 6, True)]
    assert bw6.slots == ((0,), (1,), (0,), (0,), (2,), (3,), (4,))


def test_fixed_windows_stay_inside_the_video_and_short_videos_get_variable_units():
    index = _index([100, 100, 12])
    plans = [plain_plan(index, 0, [96, 97, 98, 99]), plain_plan(index, 2, [3, 4, 5, 6], sample_index=1),
             plain_plan(index, 1, list(range(0, 40, 2)), sample_index=2)]
    bw = plan_windows(plans, index.num_frames, 16)
    u0, u1, u2 = (bw.units[bw.slots[n][0]] for n in range(3))
    assert (u0.start, u0.length) == (84, 16)  # clamped: start = min(first, num_frames - L)
    assert (u1.start, u1.length) == (3, 4)  # the video has 12 < 16 frames: a variable unit
    assert (u2.start, u2.length) == (0, 39)  # the span (39) is longer than L: a variable unit
    # only the videos a fixed-length reader reads get fixed windows
    bw_some = plan_windows(plans, index.num_frames, 16, fixed_for=lambda v: v == 1)
    assert bw_some.units[0].length == 4


def test_fixed_window_length_covers_every_span_and_one_more_frame_when_shared():
    cfg = SynthesisConfig()  # tau 4: diff_speed gamma 2 at t 2 reaches offset 13
    assert longest_span(cfg) == 14 and fixed_window_length(cfg) == 14 and fixed_window_length(cfg, 4) == 15
    assert longest_span(SynthesisConfig(types=("same_speed",), stride=2)) == 15
    index = demo_index(num_classes=3, videos_per_class=3, min_frames=30, max_frames=40, size=(8, 8))
    for share in (1, 2, 4):
        L = fixed_window_length(CFG, share)
        planner = Planner(index, CFG, seed=1, share=share)
        for n in range(0, 300, share):  # a group's slots of one video fit one window of L
            plans = planner.plan_many(range(n, n + share))
            for p in plans:
                for f in p.frames:
                    assert f[-1] - f[0] + 1 <= longest_span(CFG)
            bw = plan_windows(plans, index.num_frames, L)
            assert all(u.length == L for u in bw.units)
    with pytest.raises(ValueError, match="share"):
        fixed_window_length(cfg, 0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spans=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 60), st.integers(1, 12), st.booleans()),
                      min_size=1, max_size=12),
       L=st.one_of(st.none(), st.integers(1, 16)))
def test_every_slot_is_covered_and_units_are_unique(spans, L):
    index = _index([70, 70, 10])
    plans = []
    for k, (v, first, length, flip) in enumerate(spans):
        n = int(index.num_frames[v])
        first = min(first, n - 1)
        last = min(first + length, n)
        frames = list(range(first, last)) + [last - 1] * ((last - first) % 2)
        if len(frames) < 2:
            frames = [first, first]
        plans.append(plain_plan(index, v, frames, sample_index=k, flip=flip))
    bw = plan_windows(plans, index.num_frames, L)
    assert len(set(bw.units)) == len(bw.units)
    assert sorted({u for row in bw.slots for u in row}) == list(range(len(bw.units)))
    first_use = [u for row in bw.slots for u in row]
    assert [first_use.index(u) for u in range(len(bw.units))] == sorted(first_use.index(u) for u in range(len(bw.units)))
    for n, p in enumerate(plans):
        u = bw.units[bw.slots[n][0]]
        assert u.video == p.sources[0].video and u.start <= p.frames[0][0] and p.frames[0][-1] < u.stop
        assert u.stop <= index.num_frames[u.video] and u.flip == p.flip


def test_decode_cost_counts_from_the_keyframe_before_each_window():
    from bsp_dali.data.index import VideoInfo

    index = DatasetIndex([VideoInfo("a.mp4", 0, 100, keyframes=((0, 0), (40, 4000))),
                          VideoInfo("b.mp4", 0, 100)], ["c"])
    plans = [plain_plan(index, 0, [45, 46]), plain_plan(index, 0, [10, 11], sample_index=1),
             plain_plan(index, 1, [60, 61], sample_index=2)]
    bw = plan_windows(plans, index.num_frames)
    cost = bw.decode_cost(lambda u: index.videos[u.video].frames_to_decode(u.start, u.stop - 1))
    assert bw.decoded_frames == 6 and cost == (47 - 40) + (12 - 0) + (62 - 0)


def test_unit_and_table_arguments_are_checked():
    with pytest.raises(ValueError, match="length"):
        DecodeUnit(0, 0, 0, (0, 0, 1, 1), False)
    index = _index([50, 50, 50])
    plans = [plain_plan(index, 0, [1, 2])]
    bw = plan_windows(plans, index.num_frames)
    with pytest.raises(ValueError, match="plans"):
        RecipeTables.from_windows(plans * 2, bw)
    with pytest.raises(ValueError, match="fixed_length"):
        plan_windows(plans, index.num_frames, 0)


def test_spatial_transform_is_part_of_the_unit():
    index = demo_index(num_classes=2, videos_per_class=2, min_frames=40, max_frames=40, size=(16, 16))
    planner = Planner(index, SynthesisConfig(types=("same_speed",)), seed=0, spatial=SpatialConfig(size=(8, 8)))
    plans = planner.plan_many(range(16))
    bw = plan_windows(plans, index.num_frames, 8)
    for n, p in enumerate(plans):
        assert bw.units[bw.slots[n][0]].crop == p.crop
