"""benchmarks/profile_cpu.py runs, accounts for every process, and counts the frames it says it
decoded (it claims no speed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bsp_dali import Planner, SpatialConfig, SynthesisConfig
from test_bench import cost_by_hand

ROOT = Path(__file__).resolve().parent.parent
B, WARMUP, BATCHES = 4, 2, 48


def unit_counts(index, raw):
    """(units, frames delivered, frames decoded from the keyframe before each unit) of one batch."""
    decoded = 0
    for u in raw.windows.units:
        keys = [k for k, _ in index.videos[u.video].keyframes if k <= u.start] or [0]
        decoded += u.stop - max(keys)
    return len(raw.windows.units), sum(u.length for u in raw.windows.units), decoded


@pytest.mark.slow
def test_profile_cpu_accounts_for_the_workers_and_counts_decoded_frames(tmp_path, indexed_h264):
    manifest = tmp_path / "m.json"
    indexed_h264.save(manifest)
    out = tmp_path / "p.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_cpu.py"), str(manifest), "--batch", str(B),
                          "--size", "64", "--batches", str(BATCHES), "--warmup", str(WARMUP), "--rows", "baseline",
                          "pipeline", "pipeline-plain", "--out", str(out)], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"baseline", "pipeline", "pipeline-plain"}
    clips = B * BATCHES
    for r in rows.values():
        assert r["clips"] == clips and r["cpu_s_per_clip"] > 0
        assert r["cpu_s_per_clip"] == pytest.approx(r["main_process_cpu_s_per_clip"]
                                                    + r["child_processes_cpu_s_per_clip"])
    pipe, plain = rows["pipeline"], rows["pipeline-plain"]
    # the decode workers' CPU is counted: children of this process, and split by what they did
    assert pipe["child_processes_cpu_s_per_clip"] > 0
    assert pipe["worker_decode_cpu_s_per_clip"] + pipe["worker_transform_cpu_s_per_clip"] > 0
    assert pipe["fallbacks_per_clip"] == plain["fallbacks_per_clip"] == 0
    assert rows["baseline"]["child_processes_cpu_s_per_clip"] > rows["baseline"]["main_process_cpu_s_per_clip"]

    # the baseline's DataLoader delivers samples 0, 1, 2, ... of epoch 0: the window held samples
    # WARMUP*B .. (WARMUP+BATCHES)*B - 1, each decoded from the keyframe before each source's first frame
    syn, spatial = SynthesisConfig(tau=4), SpatialConfig(size=(64, 64))
    plans = Planner(indexed_h264, syn, seed=0, spatial=spatial).plan_many(range(WARMUP * B, (WARMUP + BATCHES) * B))
    assert rows["baseline"]["decoded_frames_per_clip"] == pytest.approx(cost_by_hand(indexed_h264, plans) / clips)

    # the pipeline rows count what the decode workers report, and the workers run up to `depth`
    # batches ahead of the consumer: the window's counts lie between the units of its batches
    # without the first `depth` and the units of its batches and `depth` more, per batch by hand
    from bsp_dali.iterator import BSPIterator

    it = BSPIterator(indexed_h264, B, synthesis=syn, spatial=spatial, device="cpu", decoder="pyav", num_threads=2,
                     dtype="float16", epoch_size=B * (WARMUP + BATCHES + 16))
    try:
        depth = it.depth
        assert depth < BATCHES // 4  # bounds within +-25 % of the window
        raws = list(it.iter_raw())[:WARMUP + BATCHES + depth]
    finally:
        it.close()
    assert [p.index for r in raws[WARMUP:WARMUP + BATCHES] for p in r.plans] == [p.index for p in plans]
    per_batch = [unit_counts(indexed_h264, r) for r in raws]

    def bounds(k):
        low = sum(c[k] for c in per_batch[WARMUP + depth:WARMUP + BATCHES]) / clips
        high = sum(c[k] for c in per_batch[WARMUP:WARMUP + BATCHES + depth]) / clips
        return low, high

    for row in (pipe, plain):
        low, high = bounds(0)
        assert low <= row["units_per_clip"] <= high, (row["row"], low, row["units_per_clip"], high)
        low, high = bounds(1)
        assert low <= row["window_frames_per_clip"] <= high, (row["row"], low, row["window_frames_per_clip"], high)
    # without skipping: every frame from the keyframe on is decoded
    low, high = bounds(2)
    assert low <= plain["decoded_frames_per_clip"] <= high, (low, plain["decoded_frames_per_clip"], high)
    # skipping unreferenced frames decodes fewer, never fewer than the frames the windows deliver
    assert pipe["window_frames_per_clip"] <= pipe["decoded_frames_per_clip"] <= high
