"""The command line: preview output checked independently, clear errors, source-tree runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bsp_dali.data.demo import DemoReader, demo_index
from bsp_dali.data.index import VideoInfo
from conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent



def test_preview_writes_what_it_promises_and_clips_match_their_recipes(tmp_path):
    out = tmp_path / "pv"
    res = run_cli("preview", "--out", str(out), "--num", "10", "--size", "20", "24", "--seed", "3",
                  "--device", "cpu", "--eps", "1", "4")
    assert res.returncode == 0, res.stderr
    assert "wrote 10 samples" in res.stdout
    assert (out / "grid.png").stat().st_size > 1000
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 10
    index = demo_index()
    by_path = {v.path: v for v in index.videos}
    reader = DemoReader(20, 24)  # an independent decode of the same frames
    for line in lines:
        rec = json.loads(line)
        clip = np.load(out / "clips" / f"{rec['index']:06d}.npy")
        assert clip.shape == (8, 20, 24, 3) and clip.dtype == np.uint8
        for i, terms in enumerate(rec["recipe"]):
            want = sum(w * reader.read(by_path[rec["sources"][s]["path"]], [f])[0].astype(float)
                       for s, f, w in terms)
            assert np.abs(clip[i].astype(float) - want).max() <= 0.5 + 1e-4
    types = {json.loads(line)["type"] for line in lines}
    assert len(types) >= 3


def test_preview_is_reproducible_from_its_seed(tmp_path):
    for name in ("a", "b"):
        assert run_cli("preview", "--out", str(tmp_path / name), "--num", "4", "--seed", "9",
                       "--device", "cpu").returncode == 0
    assert (tmp_path / "a" / "samples.jsonl").read_text() == (tmp_path / "b" / "samples.jsonl").read_text()
    for i in range(4):
        a = np.load(tmp_path / "a" / "clips" / f"{i:06d}.npy")
        assert np.array_equal(a, np.load(tmp_path / "b" / "clips" / f"{i:06d}.npy"))


@pytest.mark.parametrize("args, message", [
    (["--types", "diff_class", "--demo-classes", "1"], "diff_class needs videos of at least 2 classes"),
    (["--tau", "0"], "tau (0) must be"),
    (["--num", "0"], "--num (0) must be >= 1"),
    (["--size", "1", "5"], "--size (1 5) must be at least 2 2"),
    (["--types", "sideways"], "unknown boundary type 'sideways'"),
    (["--config", "/nonexistent/cfg.json"], "config file /nonexistent/cfg.json does not exist"),
    (["--gamma", "1.0", "--types", "diff_speed"], "gamma (1.0)"),
])
def test_user_mistakes_get_one_clear_line_not_a_traceback(tmp_path, args, message):
    res = run_cli("preview", "--out", str(tmp_path / "x"), "--device", "cpu", *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_config_file_with_cli_override(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"synthesis": {"tau": 3, "types": ["diff_speed"], "gammas": [3.0]}}))
    res = run_cli("plan", "--num", "3", "--config", str(cfg), "--tau", "2")
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["tau"] for r in recs] == [2, 2, 2] and {r["type"] for r in recs} == {"diff_speed"}
    assert {r["gamma"] for r in recs} == {3.0}


def test_help_and_info_run_from_the_source_tree_without_install(tmp_path):
    res = run_cli("--help", cwd=tmp_path)
    assert res.returncode == 0 and "preview" in res.stdout and "plan" in res.stdout
    res = run_cli("info", cwd=tmp_path)
    assert res.returncode == 0 and "default synthesis settings" in res.stdout


def test_import_needs_no_gpu_stack():
    code = ("import sys, bsp_dali; assert 'cupy' not in sys.modules and 'nvidia.dali' not in sys.modules"
            " and 'torch' not in sys.modules; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_demo_reader_refuses_frames_beyond_the_end():
    video = VideoInfo("demo://pendulum/0", 0, 10)
    with pytest.raises(IndexError, match="frame 10 is outside 0..9"):
        DemoReader(8, 8).read(video, [9, 10])
