"""The benchmarks run and report sane numbers (never a speed: speed is not asserted in tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from bsp_dali.bench import BenchSettings, evaluate_goals, run_bench

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_runs_and_writes_sane_results(tmp_path, monkeypatch):
    monkeypatch.setenv("BSP_DALI_CACHE", str(tmp_path / "cache"))
    result = run_bench(BenchSettings.quick_settings("cpu"), tmp_path / "out")
    kinds = [r["row"] for r in result["rows"]]
    assert {"pipeline", "baseline", "decode-only", "kernel", "train-step"} <= set(kinds)
    for r in result["rows"]:
        if "clips_per_s" in r:
            assert r["clips_per_s"] > 0
        if r["row"] in ("pipeline", "baseline", "decode-only"):
            # T=8 clips: between 8 (one source, consecutive frames) and 16 planned frames per clip
            assert 8 <= r["frames_per_s"] / r["clips_per_s"] <= 16
    train = next(r for r in result["rows"] if r["row"] == "train-step")
    assert 0 <= train["stall_fraction"] < 1 and train["static_seconds"] > 0
    assert result["machine"]["cpu_cores"] >= 1 and result["machine"]["torch"]
    assert [g["goal"] for g in result["goals"]] == ["pipeline / baseline (same cores)"]
    md = (tmp_path / "out" / "bench-cpu-quick.md").read_text()
    assert "| pipeline |" in md and "Where the time goes" in md and "Machine:" in md
    assert json.loads((tmp_path / "out" / "bench-cpu-quick.json").read_text())["rows"]
    assert Image.open(tmp_path / "out" / "bench-cpu-quick.png").size[0] > 100


def test_goal_evaluation():
    rows = [{"row": "pipeline", "threads": 16, "clips_per_s": 500.0, "decoder": "DALI NVDEC (GPU)"},
            {"row": "baseline", "threads": 16, "clips_per_s": 40.0, "decoder": "pyav in 16 DataLoader workers"},
            {"row": "baseline", "threads": 16, "clips_per_s": 400.0, "decoder": "decord in 16 DataLoader workers"},
            {"row": "decode-only", "threads": 16, "clips_per_s": 550.0, "decoder": "DALI"},
            {"row": "kernel", "fraction_of_copy": 0.65},
            {"row": "train-step", "stall_fraction": 0.02}]
    goals = {g["goal"]: g for g in evaluate_goals(rows, "gpu", (8, 16))}
    assert goals["pipeline / baseline (all cores)"]["measured"] == 12.5  # against the PyAV baseline
    assert goals["pipeline / baseline (all cores)"]["met"]
    assert abs(goals["pipeline / decode-only"]["measured"] - 500 / 550) < 1e-9
    assert not goals["kernel / copy bandwidth"]["met"]
    assert goals["train-step stall fraction"]["met"]


def test_kernel_script_quick(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kernel.py"), "--quick", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr
    row = json.loads((tmp_path / "kernel-cpu-quick.json").read_text())["rows"][0]
    assert row["GBps"] > 0 and row["copy_GBps"] > 0
