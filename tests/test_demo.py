"""`bsp-dali demo` at a tiny size: every promised file, a sane report."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_tiny(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = ("from bsp_dali.tools.demo_job import run_demo; import json; "
            f"print(json.dumps(run_demo({str(tmp_path)!r}, minutes=0.15, classes=2, per_class=8, gpus=0, val_clips=16)))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    conf = result["confusion"]
    assert len(conf) == 4 and sum(map(sum, conf)) == result["val_clips"] == 16  # every held-out clip, once
    assert result["boundary_accuracy"] == sum(conf[i][i] for i in range(4)) / 16  # the confusion's diagonal
    assert result["chance"] == 0.25 and result["videos"] == 16 and result["classes"] == ["bouncing_ball", "rotating_bar"]
    for key in ("checkpoint", "preview", "metrics", "report"):
        assert Path(result["files"][key]).is_file(), key
    assert (tmp_path / "data" / "bsp-dali-manifest.json").is_file()
    assert f"**{100 * result['boundary_accuracy']:.1f}%**" in (tmp_path / "report.md").read_text()
    assert len(list((tmp_path / "data" / "train").rglob("*.mp4"))) == 16
