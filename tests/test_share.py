"""Decode once, use more than once: ``share=k`` couples groups of k samples through common random
numbers. Each sample's marginal distribution is the uncoupled one; groups share windows."""

import numpy as np
import pytest
import torch

from bsp_dali import BoundaryType, DatasetIndex, Planner, SynthesisConfig
from bsp_dali.decode.windows import fixed_window_length, plan_windows
from bsp_dali.plan.augment import SpatialConfig

DC, SC = BoundaryType.DIFF_CLASS, BoundaryType.SAME_CLASS
SPATIAL = SpatialConfig(size=(32, 32))


def make_index():
    # 4 classes, 16 videos of varied lengths (some too short for the long diff_speed spans, so
    # the eligible sets of the types differ) and two frame sizes (crops depend on them)
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(12, 60, size=16)]
    lengths[3], lengths[9] = 9, 10
    paths = [f"c{i % 4}/v{i}.mp4" for i in range(16)]
    sizes = [(96, 64) if i % 3 else (64, 64) for i in range(16)]
    return DatasetIndex.from_lists(paths, [f"c{i % 4}" for i in range(16)], lengths, sizes=sizes)


def chi2_homogeneity(a, b, min_expected=5.0):
    """p-value of the chi-square test that two samples of categories come from one distribution
    (categories with fewer than ``min_expected`` expected counts are pooled)."""
    cats = sorted(set(a) | set(b), key=repr)
    ca = np.array([sum(1 for x in a if x == c) for c in cats], float)
    cb = np.array([sum(1 for x in b if x == c) for c in cats], float)
    tot = ca + cb
    ea, eb = tot * len(a) / (len(a) + len(b)), tot * len(b) / (len(a) + len(b))
    small = (ea < min_expected) | (eb < min_expected)
    if small.any():
        ca = np.append(ca[~small], ca[small].sum())
        cb = np.append(cb[~small], cb[small].sum())
        ea = np.append(ea[~small], ea[small].sum())
        eb = np.append(eb[~small], eb[small].sum())
        keep = (ea > 0) & (eb > 0)
        ca, cb, ea, eb = ca[keep], cb[keep], ea[keep], eb[keep]
    stat = float(((ca - ea) ** 2 / ea).sum() + ((cb - eb) ** 2 / eb).sum())
    df = len(ca) - 1
    if df < 1:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64),
                                         torch.tensor(stat / 2.0, dtype=torch.float64)))


def features(plan, index):
    """What a sample's marginal is about: type, classes, videos, relative start frames, crop."""
    tau, d = plan.tau, plan.stride
    out = {"type": plan.type.key, "classes": tuple(s.label for s in plan.sources),
           "videos": tuple(s.video for s in plan.sources), "flip": plan.flip,
           "crop_area": round((plan.crop[2] - plan.crop[0]) * (plan.crop[3] - plan.crop[1]), 1)}
    # start frame of slot 0, as a tenth of its range (the range depends on the video and the span)
    f = plan.frames[0]
    span = {DC: (tau + (plan.eps or 0) - 2) * d + 1}.get(plan.type, f[-1] - f[0] + 1)
    if plan.type == BoundaryType.DIFF_SPEED:
        from bsp_dali.plan.planner import frames_needed_diff_speed

        span = frames_needed_diff_speed(tau, plan.t, plan.gamma, d)
    room = int(index.num_frames[plan.sources[0].video]) - span + 1
    out["start_decile"] = int(10 * f[0] // room)
    return out


@pytest.mark.parametrize("banned", [frozenset(), frozenset({0, 5, 6})])
def test_each_samples_marginal_is_the_uncoupled_one(banned):
    index = make_index()
    cfg = SynthesisConfig(gammas=(0.5, 2.0))
    k, groups = 4, 3000
    plain = Planner(index, cfg, seed=11, spatial=SPATIAL)
    coupled = Planner(index, cfg, seed=11, spatial=SPATIAL, share=k)
    # exact: the type and its parameters come from the sample's own stream in both modes
    for i in range(200):
        p, q = plain.plan(i, 0, banned=banned), coupled.plan(i, 0, banned=banned)
        assert (p.type, p.eps, p.gamma, p.t, p.mu, p.label) == (q.type, q.eps, q.gamma, q.t, q.mu, q.label)
        assert not ({s.video for s in q.sources} & banned)
        if q.type == DC:
            assert q.sources[0].label != q.sources[1].label
        if q.type == SC:
            assert q.sources[0].label == q.sources[1].label and q.sources[0].video != q.sources[1].video
    # statistical: one sample per group (groups are independent), against independent draws of
    # other samples; every feature and the joint (type, classes) at the 0.1 % level
    for j in (0, k - 1):
        a = [features(plain.plan(g * k + j + 7 * k * groups, 0, banned=banned), index) for g in range(groups)]
        b = [features(coupled.plan(g * k + j, 0, banned=banned), index) for g in range(groups)]
        for key in ("type", "classes", "videos", "start_decile", "flip", "crop_area"):
            p = chi2_homogeneity([x[key] for x in a], [x[key] for x in b])
            assert p > 1e-3, (key, j, p)


def test_the_chi_square_helper_rejects_different_distributions():
    rng = np.random.default_rng(0)
    same = chi2_homogeneity(list(rng.integers(0, 6, 3000)), list(rng.integers(0, 6, 3000)))
    skew = chi2_homogeneity(list(rng.integers(0, 6, 3000)), list(np.minimum(rng.integers(0, 7, 3000), 5)))
    assert same > 1e-3 and skew < 1e-6


def test_the_uniform_to_index_map_is_exactly_uniform():
    # floor(r * n / 2**64) over all 64-bit r: value j has the preimage [edge(j), edge(j+1)) with
    # edge(j) = ceil(j * 2**64 / n), so every value has floor or ceil of 2**64 / n preimages
    def edge(j, n):
        return -(-(j * 2**64) // n)

    for n in (1, 2, 3, 7, 240_000, 2**40 + 3):
        js = sorted({0, 1, n // 3, n // 2, n - 1})
        sizes = {edge(j + 1, n) - edge(j, n) for j in js}
        assert sizes <= {2**64 // n, -(-(2**64) // n)}
        for j in js:
            assert Planner._scaled(edge(j, n), n) == j
            assert Planner._scaled(edge(j + 1, n) - 1, n) == j
        assert Planner._scaled(2**64 - 1, n) == n - 1


def test_share_one_is_todays_draws_exactly():
    index = make_index()
    a = Planner(index, SynthesisConfig(), seed=3, spatial=SPATIAL)
    b = Planner(index, SynthesisConfig(), seed=3, spatial=SPATIAL, share=1)
    assert [a.plan(i).to_json() for i in range(100)] == [b.plan(i).to_json() for i in range(100)]
    with pytest.raises(ValueError, match="share"):
        Planner(index, SynthesisConfig(), share=0)


def test_groups_share_windows_so_batches_decode_fewer_frames():
    # long videos of one size: every group of k lands in one video per slot and pool
    index = DatasetIndex.from_lists([f"c{i % 4}/v{i}.mp4" for i in range(40)], [f"c{i % 4}" for i in range(40)],
                                    [250] * 40, sizes=[(340, 256)] * 40)
    cfg = SynthesisConfig()
    B, k = 16, 4
    units = {}
    frames = {}
    for share in (1, k):
        planner = Planner(index, cfg, seed=2, spatial=SPATIAL, share=share)
        L = fixed_window_length(cfg, share)
        units[share], frames[share] = [], []
        for b in range(40):
            plans = planner.plan_many(range(b * B, (b + 1) * B))
            fixed = plan_windows(plans, index.num_frames, L)
            var = plan_windows(plans, index.num_frames)
            units[share].append(len(fixed.units))
            frames[share].append(var.decoded_frames)
            if share == k:
                for g in range(0, B, k):  # slot 0: one unit per group; slot 1: at most two pools
                    grp = fixed.slots[g:g + k]
                    assert len({row[0] for row in grp}) == 1
                    assert len({row[1] for row in grp if len(row) > 1}) <= 2
    assert np.mean(units[k]) < 0.45 * np.mean(units[1])
    assert np.mean(frames[k]) < 0.6 * np.mean(frames[1])


def test_iterator_with_share_yields_the_plans_of_its_planner():
    from bsp_dali.data.demo import demo_index
    from bsp_dali.iterator import BSPIterator

    index = demo_index(size=(24, 24))
    it = BSPIterator(index, batch_size=4, epoch_size=8, share=2, device="cpu", spatial=SpatialConfig(size=(16, 16)),
                     return_recipes=True)
    ref = Planner(index, it.synthesis, seed=0, spatial=it.spatial, share=2)
    got = [r for b in it for r in b["recipes"]]
    assert got == [ref.plan(i, 0).to_json() for i in range(8)]
    state = it.state_dict()
    with pytest.raises(ValueError, match="share"):
        BSPIterator(index, batch_size=4, epoch_size=8, device="cpu").load_state_dict(state)


@pytest.mark.parametrize("policy", ["drop", "partial", "fill"])
@pytest.mark.parametrize("share, world, epoch", [(1, 3, 10), (3, 2, 20), (4, 3, 26), (2, 2, 9)])
def test_ranks_take_whole_groups_disjoint_and_covering(policy, share, world, epoch):
    from bsp_dali.data.demo import demo_index
    from bsp_dali.iterator import BSPIterator

    index = demo_index(size=(16, 16))
    seen = []
    for r in range(world):
        it = BSPIterator(index, batch_size=2, epoch_size=epoch, shard=(r, world), share=share, device="cpu",
                         last_batch_policy=policy)
        idx = [i for b in range(len(it)) for i in it.batch_indices(b)]
        assert all(0 <= i < epoch for i in idx)
        assert all((i // share) % world == r for i in idx)  # whole groups per rank
        seen.append(idx)
    flat = [i for s in seen for i in s]
    if policy == "partial":
        assert sorted(flat) == list(range(epoch))
    elif policy == "drop":
        assert len(set(flat)) == len(flat) and len({len(s) for s in seen}) == 1
    else:
        assert set(flat) == set(range(epoch)) and len({len(s) for s in seen}) == 1
