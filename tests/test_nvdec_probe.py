"""benchmarks/nvdec_probe.py runs on the CPU (--help, --dry-run); its GPU rows need a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_probe_help_and_dry_run(tmp_path):
    pytest.importorskip("nvidia.dali")
    env = dict(os.environ, PYTHONPATH=str(ROOT), BSP_DALI_CACHE=str(tmp_path / "cache"))
    script = str(ROOT / "benchmarks" / "nvdec_probe.py")
    res = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and "--dry-run" in res.stdout
    res = subprocess.run([sys.executable, script, "--dry-run", "--out", str(tmp_path / "out")], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "nvdec-probe-cpu-dry-run.json").read_text())
    assert result["dry_run"] and result["length"] == 8 and len(result["rows"]) == 6
    for row in result["rows"]:
        assert row["error"] is None, row
        # every window asked for came back, with its 8 frames: counted from the readers' outputs
        assert row["returned_windows"] == row["windows"] == 12, row
        assert row["returned_frames"] == 8 * 12, row
        assert row["windows_per_s"] == pytest.approx(row["returned_windows"] / row["seconds"])
        assert row["frames_per_s"] == pytest.approx(row["returned_frames"] / row["seconds"])
    md = (tmp_path / "out" / "nvdec-probe-cpu-dry-run.md").read_text()
    assert "DRY RUN" in md and md.count("| 12/12 |") == 6


def test_probe_rates_count_what_came_back():
    """A reader that skips a window or returns a short one lowers the rates and names the gap."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from nvdec_probe import rates, returned

    from bsp_dali.data.index import BadVideo

    outputs = [np.zeros((8, 4, 4, 3)), BadVideo("a.mp4", "broken"), np.zeros((7, 4, 4, 3)), np.zeros((8, 4, 4, 3))]
    assert returned(outputs, 8) == (2, 23)
    row = rates(4, *returned(outputs, 8), 2.0, [])
    assert row["windows_per_s"] == 1.0 and row["frames_per_s"] == 11.5
    assert row["error"] == "the readers returned 2 of 4 windows"
    assert rates(4, 4, 32, 2.0, [])["error"] is None
    assert rates(4, 0, 0, 2.0, ["RuntimeError: x"])["error"] == "RuntimeError: x"


def test_nvdec_engine_table():
    from bsp_dali.decode.nvdec import engines_from_name, nvdec_engines

    assert engines_from_name("NVIDIA H100 80GB HBM3") == 7 and engines_from_name("NVIDIA H200") == 7
    assert engines_from_name("NVIDIA A100-SXM4-40GB") == 5 and engines_from_name("NVIDIA L40S") == 3
    assert engines_from_name("NVIDIA L4") == 4 and engines_from_name("Tesla T4") == 2
    assert engines_from_name("some card") is None
    assert nvdec_engines(0) >= 1  # no GPU here: 1
