"""The planner against the equations of BSP-METHOD.md, written out again here independently."""

import json
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bsp_dali import BoundaryType, DatasetIndex, Planner, PlanningError, SynthesisConfig

DC, SC, DS, SS = BoundaryType.DIFF_CLASS, BoundaryType.SAME_CLASS, BoundaryType.DIFF_SPEED, BoundaryType.SAME_SPEED


def make_index(per_class, lengths=None):
    paths, names, nf = [], [], []
    k = 0
    for c, count in enumerate(per_class):
        for v in range(count):
            paths.append(f"train/class{c}/vid{v}.mp4")
            names.append(f"class{c}")
            nf.append(lengths[k] if lengths is not None else 100)
            k += 1
    return DatasetIndex.from_lists(paths, names, nf)


def nearest_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def expected_terms(plan, i):
    """Output frame i of a plan, from the paper's equations (0-based), using the plan's own
    parameters and start frames."""
    tau, d, T = plan.tau, plan.stride, 2 * plan.tau
    if plan.type == DC:
        eps = plan.eps
        a0 = plan.recipe[0][0][1]  # frame 0 always has an A term
        b0 = next(f for (s, f, w) in plan.recipe[tau - eps] if s == 1)
        if i < tau - eps:
            return [(0, a0 + i * d, Fraction(1))]
        if i < tau + eps:
            wb = Fraction(i + 1 - tau + eps, 2 * eps)
            terms = [(0, a0 + i * d, 1 - wb), (1, b0 + (i - tau + eps) * d, wb)]
            return [t for t in terms if t[2] != 0]
        return [(1, b0 + (i - tau + eps) * d, Fraction(1))]
    if plan.type == SC:
        a0, b0 = plan.recipe[0][0][1], plan.recipe[tau][0][1]
        return [(0, a0 + i * d, Fraction(1))] if i < tau else [(1, b0 + (i - tau) * d, Fraction(1))]
    s0 = plan.recipe[0][0][1]
    if plan.type == DS:
        t, g = plan.t, Fraction(str(plan.gamma))
        if i < t:
            return [(0, s0 + i * d, Fraction(1))]
        return [(0, nearest_half_up(s0 + d * (t - 1 + g * (i - t + 1))), Fraction(1))]
    assert T == len(plan.recipe)
    return [(0, s0 + i * d, Fraction(1))]


def check_plan(plan, index, cfg):
    T = cfg.T
    assert plan.tau == cfg.tau and plan.stride == cfg.stride and len(plan.recipe) == T
    assert plan.type in cfg.types
    assert plan.label == sorted(cfg.types).index(plan.type)
    assert len(plan.sources) == plan.type.num_sources
    for i in range(T):
        got = [(s, f, w) for (s, f, w) in plan.recipe[i]]
        want = expected_terms(plan, i)
        assert [(s, f) for s, f, _ in got] == [(s, f) for s, f, _ in want], (plan, i)
        for (_, _, w), (_, _, wf) in zip(got, want):
            assert w == float(wf)
        assert abs(sum(w for _, _, w in got) - 1.0) < 1e-12
        assert all(w > 0 for _, _, w in got)
    # frames exist in their videos; decode lists are exactly the frames used
    for slot, src in enumerate(plan.sources):
        used = sorted({f for terms in plan.recipe for (s, f, _) in terms if s == slot})
        assert list(plan.frames[slot]) == used
        assert used[0] >= 0 and used[-1] < index.videos[src.video].num_frames
        assert src.path == index.videos[src.video].path and src.label == index.videos[src.video].label
    # sources and their classes
    if plan.type.num_sources == 2:
        a, b = plan.sources
        assert a.video != b.video
        assert (a.label != b.label) if plan.type == DC else (a.label == b.label)
    assert plan.action == plan.sources[0].label
    # parameters and change point
    if plan.type == DC:
        assert cfg.eps_range[0] <= plan.eps <= cfg.eps_range[1] and plan.mu == cfg.tau
    elif plan.type == SC:
        assert plan.mu == cfg.tau
    elif plan.type == DS:
        lo, hi = cfg.resolved_t_range
        assert plan.gamma in cfg.gammas and lo <= plan.t <= hi and plan.mu == plan.t
    else:
        assert plan.mu is None
    heat = plan.heatmap
    assert heat.shape == (T,) and heat.dtype == np.float32
    if plan.mu is None:
        assert not heat.any()
    else:
        k = np.arange(T)
        assert np.allclose(heat, np.exp(-((k - plan.mu) ** 2) / (2 * cfg.tau)))
        assert heat[plan.mu] == 1.0


# ---------------------------------------------------------------------------------- properties
configs = st.builds(
    lambda tau, eps, gam, stride, types, t: SynthesisConfig(
        tau=tau, eps_range=(min(eps, tau, 2), min(eps, tau)),
        gammas=gam, stride=stride, types=types,
        t_range=None if t is None else (max(1, min(t, 2 * tau - 1)), 2 * tau - 1)),
    tau=st.integers(1, 8), eps=st.integers(1, 8),
    gam=st.lists(st.sampled_from([0.25, 0.3, 0.5, 0.75, 1.5, 2.0, 2.5, 3.0]), min_size=1, max_size=3, unique=True),
    stride=st.integers(1, 4),
    types=st.lists(st.sampled_from(list(BoundaryType)), min_size=1, max_size=4, unique=True),
    t=st.one_of(st.none(), st.integers(1, 15)),
)


def test_every_plan_satisfies_its_equation():
    """Hypothesis draws configs and data sets; the run must have checked plans, not only refusals:
    at least 120 of the 300 examples accepted (about 190 are), and plans of every boundary type checked."""
    seen = {"examples": 0, "accepted": 0, "types": Counter()}

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(cfg=configs, per_class=st.lists(st.integers(1, 5), min_size=1, max_size=6),
           lengths_seed=st.integers(0, 2**31), seed=st.integers(0, 2**31), epoch=st.integers(0, 5))
    def check(cfg, per_class, lengths_seed, seed, epoch):
        rng = np.random.default_rng(lengths_seed)
        index = make_index(per_class, rng.integers(1, 120, size=sum(per_class)).tolist())
        checked = check_planner(index, cfg, seed, range(20), epoch, seen["types"])
        event("accepted" if checked else "refused")
        seen["examples"] += 1
        seen["accepted"] += checked == 20

    check()
    assert seen["examples"] >= 300 and seen["accepted"] >= 120, seen
    assert all(seen["types"][t] >= 200 for t in BoundaryType), seen


def check_planner(index, cfg, seed, samples, epoch, types=None):
    """Either the planner refuses the config for a type that has no candidates, or every plan of
    ``samples`` (an iterable, read only when the planner accepts) satisfies its equation. Returns
    the number of plans checked (0 when refused); ``types``, a Counter, counts them by type."""
    try:
        planner = Planner(index, cfg, seed=seed)
    except PlanningError as e:
        assert_really_infeasible(index, cfg, str(e))
        return 0
    checked = 0
    for i in samples:
        plan = planner.plan(i, epoch)
        check_plan(plan, index, cfg)
        checked += 1
        if types is not None:
            types[plan.type] += 1
    return checked


def assert_really_infeasible(index, cfg, message):
    """A PlanningError must name a type that, at its largest settings, has no candidates."""
    tau, d, T = cfg.tau, cfg.stride, cfg.T
    kind = next(t for t in cfg.types if message.startswith(t.key))
    n = index.num_frames
    if kind == DC:
        need = (tau + cfg.eps_range[1] - 1) * d + 1
        assert len({int(index.labels[v]) for v in np.flatnonzero(n >= need)}) < 2
    elif kind == SC:
        need = (tau - 1) * d + 1
        counts = np.bincount(index.labels[n >= need], minlength=index.num_classes)
        assert counts.max(initial=0) < 2
    elif kind == DS:
        lo, hi = cfg.resolved_t_range
        need = max(nearest_half_up(d * (t - 1 + Fraction(str(g)) * (T - t))) + 1
                   for g in cfg.gammas for t in range(lo, hi + 1))
        assert n.max() < need
    else:
        assert n.max() < (T - 1) * d + 1


def test_thousands_of_random_configs_and_lengths():
    """A plain randomized sweep beside the hypothesis one: 2000 configs x 3 samples."""
    rng = np.random.default_rng(2024)
    checked = 0
    for trial in range(2000):
        tau = int(rng.integers(1, 9))
        hi = int(rng.integers(1, tau + 1))
        types = [t for t in BoundaryType if rng.random() < 0.7] or [SS]
        cfg = SynthesisConfig(tau=tau, eps_range=(int(rng.integers(1, hi + 1)), hi), stride=int(rng.integers(1, 4)),
                              gammas=tuple(rng.choice([0.3, 0.5, 0.75, 1.25, 2.0, 3.0], size=2, replace=False)),
                              types=types)
        per_class = rng.integers(1, 4, size=int(rng.integers(1, 5))).tolist()
        index = make_index(per_class, rng.integers(1, 80, size=sum(per_class)).tolist())
        checked += check_planner(index, cfg, trial, (int(rng.integers(0, 10**6)) for _ in range(3)), trial % 3)
    assert checked > 2000


# ---------------------------------------------------------------------------------- determinism
def test_same_sample_whatever_the_order_batch_or_shard():
    index = make_index([3, 4, 2, 5], lengths=list(range(20, 34)))
    cfg = SynthesisConfig()
    a = Planner(index, cfg, seed=7)
    whole = [a.plan(i, epoch=2) for i in range(64)]
    # a fresh planner, samples visited in reverse, and in 4 interleaved shards
    b = Planner(index, cfg, seed=7)
    assert [b.plan(i, 2) for i in reversed(range(64))][::-1] == whole
    shards = {i: Planner(index, cfg, seed=7).plan(i, 2) for r in range(4) for i in range(r, 64, 4)}
    assert [shards[i] for i in range(64)] == whole
    # batches of 5 (a resume at sample 30 included)
    batched = [p for s in range(0, 64, 5) for p in a.plan_many(range(s, min(s + 5, 64)), epoch=2)]
    assert batched == whole
    assert Planner(index, cfg, seed=7).plan_many(range(30, 64), epoch=2) == whole[30:]


def test_seed_and_epoch_change_the_samples():
    index = make_index([3, 4, 2, 5])
    p = Planner(index, seed=1)
    base = [p.plan(i, 0).to_json() for i in range(32)]
    assert [p.plan(i, 1).to_json() for i in range(32)] != base
    assert [Planner(index, seed=2).plan(i, 0).to_json() for i in range(32)] != base


def test_type_frequencies_follow_probs():
    index = make_index([4, 4, 4])
    cfg = SynthesisConfig(probs=(0.4, 0.3, 0.2, 0.1))
    p = Planner(index, cfg, seed=3)
    counts = np.bincount([p.plan(i).type for i in range(4000)], minlength=4) / 4000
    assert np.allclose(counts, [0.4, 0.3, 0.2, 0.1], atol=0.03)


def test_sources_are_drawn_uniformly_among_eligible_videos():
    # class 0 has one long and one short video; only the long one fits a same_speed clip at
    # stride 10 (needs 71 frames)
    index = make_index([2, 2], lengths=[80, 30, 90, 100])
    cfg = SynthesisConfig(stride=10, types=(SS,))
    p = Planner(index, cfg, seed=0)
    picks = np.bincount([p.plan(i).sources[0].video for i in range(3000)], minlength=4)
    assert picks[1] == 0
    assert np.allclose(picks[[0, 2, 3]] / 3000, 1 / 3, atol=0.04)


# ---------------------------------------------------------------------------------- data-set edge cases
def test_one_video_classes_never_give_same_class_pairs():
    index = make_index([1, 3, 1])  # only class1 has two videos
    p = Planner(index, SynthesisConfig(types=(SC,)), seed=0)
    for i in range(300):
        plan = p.plan(i)
        assert plan.sources[0].label == plan.sources[1].label == 1
        assert plan.sources[0].video != plan.sources[1].video


def test_one_class_data_set_is_refused_for_diff_class_at_setup():
    index = make_index([5])
    with pytest.raises(PlanningError, match="diff_class needs videos of at least 2 classes"):
        Planner(index, SynthesisConfig())
    # the other types still work on one class
    p = Planner(index, SynthesisConfig(types=(SC, DS, SS)))
    assert {p.plan(i).type for i in range(50)} == {SC, DS, SS}


def test_no_class_with_two_videos_is_refused_for_same_class():
    with pytest.raises(PlanningError, match="same_class needs a class with at least 2 videos"):
        Planner(make_index([1, 1, 1]), SynthesisConfig())


def test_videos_too_short_are_refused_with_the_numbers():
    index = make_index([2, 2], lengths=[5, 6, 7, 6])
    with pytest.raises(PlanningError, match=r"same_speed needs a video with >= 8 frames .* longest has 7"):
        Planner(index, SynthesisConfig(types=(SS,)))
    with pytest.raises(PlanningError, match="diff_speed"):
        Planner(index, SynthesisConfig(types=(DS,), gammas=(2.0,)))
    Planner(index, SynthesisConfig(types=(SS,), tau=3))  # 6 frames are enough for T = 6


def test_zero_probability_type_is_not_checked_nor_drawn():
    index = make_index([5])
    p = Planner(index, SynthesisConfig(types=(DC, SS), probs=(0.0, 1.0)))
    assert {p.plan(i).type for i in range(40)} == {SS}


def test_empty_index_and_bad_arguments():
    with pytest.raises(PlanningError, match="no videos"):
        Planner(DatasetIndex([], []))
    p = Planner(make_index([2, 2]))
    with pytest.raises(ValueError, match="sample_index"):
        p.plan(-1)
    with pytest.raises(ValueError, match="seed"):
        Planner(make_index([2, 2]), seed=-3)


def test_eps_equals_tau_and_weights():
    p = Planner(make_index([2, 2]), SynthesisConfig(tau=2, eps_range=(2, 2), types=(DC,)), seed=0)
    plan = p.plan(0)
    weights = [[w for (_, _, w) in terms] for terms in plan.recipe]
    # wB = (i+1)/4 for i = 0..3, the last frame pure B
    assert weights == [[0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [1.0]]
    assert [s for (s, _, _) in plan.recipe[3]] == [1]


def test_slow_speed_repeats_and_fast_speed_skips():
    index = make_index([1], lengths=[200])
    slow = Planner(index, SynthesisConfig(tau=4, gammas=(0.5,), t_range=(4, 4), types=(DS,))).plan(0)
    off = [terms[0][1] - slow.recipe[0][0][1] for terms in slow.recipe]
    # i<4: 0..3; i>=4: nearest(3 + 0.5*(i-3)) half up: 3.5->4, 4->4, 4.5->5, 5->5
    assert off == [0, 1, 2, 3, 4, 4, 5, 5]
    fast = Planner(index, SynthesisConfig(tau=4, gammas=(2.0,), t_range=(2, 2), stride=3, types=(DS,))).plan(0)
    off = [terms[0][1] - fast.recipe[0][0][1] for terms in fast.recipe]
    assert off == [0, 3, 9, 15, 21, 27, 33, 39]


# ---------------------------------------------------------------------------------- labels and JSON
def test_label_order_is_canonical_for_any_enabled_subset():
    index = make_index([3, 3])
    p = Planner(index, SynthesisConfig(types=("same_speed", "diff_class")), seed=0)
    seen = {p.plan(i).type: p.plan(i).label for i in range(40)}
    assert seen == {DC: 0, SS: 1}
    p4 = Planner(index, SynthesisConfig(), seed=0)
    assert all(p4.plan(i).label == int(p4.plan(i).type) for i in range(40))


def test_recipe_json_has_exactly_the_documented_format():
    p = Planner(make_index([2, 2]), SynthesisConfig(types=(DC,)), seed=0)
    obj = json.loads(json.dumps(p.plan(17).to_json()))
    assert list(obj) == ["index", "type", "label", "tau", "eps", "gamma", "t", "mu", "sources", "recipe"]
    assert obj["index"] == 17 and obj["type"] == "diff_class" and obj["label"] == 0 and obj["mu"] == 4
    assert set(obj["sources"][0]) == {"path", "class"}
    assert obj["sources"][0]["path"].startswith("train/class")
    assert all(len(term) == 3 for frame in obj["recipe"] for term in frame)


def test_replacement_draws_avoid_banned_videos_and_partners_left_alone():
    index = make_index([2, 3])  # class0: videos 0 and 1; class1: videos 2, 3, 4
    p = Planner(index, SynthesisConfig(types=(SC,)), seed=0)
    for i in range(200):
        plan = p.plan(i, banned=frozenset({0}))
        # video 1 has no unbanned partner left in class0: only class1 can give a same_class pair
        assert plan.sources[0].label == plan.sources[1].label == 1
        assert 0 not in {s.video for s in plan.sources}
    with pytest.raises(PlanningError, match="no usable video is left"):
        p.plan(0, banned=frozenset({0, 2, 3}))
