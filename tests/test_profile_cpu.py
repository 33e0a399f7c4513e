"""benchmarks/profile_cpu.py runs and accounts for every process (a smoke test: it claims no speed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_profile_cpu_accounts_for_the_workers(tmp_path, indexed_h264):
    manifest = tmp_path / "m.json"
    indexed_h264.save(manifest)
    out = tmp_path / "p.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_cpu.py"), str(manifest), "--batch", "4",
                          "--size", "64", "--batches", "6", "--warmup", "1", "--rows", "baseline", "pipeline",
                          "pipeline-plain", "--out", str(out)], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"baseline", "pipeline", "pipeline-plain"}
    for r in rows.values():
        assert r["clips"] == 24 and r["cpu_s_per_clip"] > 0
        assert r["cpu_s_per_clip"] >= r["main_process_cpu_s_per_clip"]
    pipe = rows["pipeline"]
    # the decode workers' CPU is counted: children of this process, and split by what they did
    assert pipe["child_processes_cpu_s_per_clip"] > 0
    assert pipe["worker_decode_cpu_s_per_clip"] + pipe["worker_transform_cpu_s_per_clip"] > 0
    assert pipe["window_frames_per_clip"] >= 1 and pipe["fallbacks_per_clip"] == 0
    assert rows["baseline"]["child_processes_cpu_s_per_clip"] > rows["baseline"]["main_process_cpu_s_per_clip"]
