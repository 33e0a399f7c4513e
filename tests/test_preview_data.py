"""`bsp-dali preview DATA` on real files, checked against another decoder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ffmpeg_frames

ROOT = Path(__file__).resolve().parent.parent


def cli(*args):
    return subprocess.run([sys.executable, "-m", "bsp_dali", *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)


def check_against_ffmpeg(out, data_root, size, mean_tol, max_tol):
    """Each clip frame = its recipe applied to frames decoded by the ffmpeg program and resized with
    Pillow to ``size`` (plain resize: no augmentation). ``mean_tol`` bounds the mean absolute error
    of every single output frame (not a mean over the batch), ``max_tol`` its largest pixel error."""
    H, W = size
    cache = {}
    for line in (out / "samples.jsonl").read_text().splitlines():
        rec = json.loads(line)
        clip = np.load(out / "clips" / f"{rec['index']:06d}.npy")
        assert clip.shape == (2 * rec["tau"], H, W, 3) and clip.dtype == np.uint8
        for i, terms in enumerate(rec["recipe"]):
            want = 0.0
            for slot, frame, w in terms:
                path = rec["sources"][slot]["path"]
                if path not in cache:
                    cache[path] = ffmpeg_frames(data_root / path)
                raw = cache[path][frame]
                want = want + w * np.asarray(Image.fromarray(raw).resize((W, H), Image.BILINEAR), np.float64)
            diff = np.abs(clip[i].astype(np.float64) - want)
            assert diff.mean() < mean_tol and diff.max() < max_tol, (rec["index"], i, diff.mean(), diff.max())


def test_preview_h264_on_cpu_matches_an_independent_decode(tmp_path, kinetics_h264, indexed_h264):
    if ffmpeg_frames(next((kinetics_h264 / "train").rglob("*.mp4"))) is None:
        pytest.skip("imageio-ffmpeg missing")
    out = tmp_path / "pv"
    res = cli("preview", str(kinetics_h264), "--out", str(out), "--num", "10", "--size", "32", "48",
              "--device", "cpu", "--gif", "--eps", "1", "4")
    assert res.returncode == 0, res.stderr
    assert "the rest: PyAV (CPU) in" in res.stdout  # H.264 on the CPU: PyAV in the decode workers
    assert (out / "grid.png").is_file() and len(list((out / "clips").glob("*.gif"))) == 10
    check_against_ffmpeg(out, kinetics_h264, (32, 48), mean_tol=2.5, max_tol=48)


def test_preview_vp9_through_dali_cpu_matches_an_independent_decode(tmp_path, kinetics_vp9, indexed_vp9):
    pytest.importorskip("nvidia.dali")
    if ffmpeg_frames(next((kinetics_vp9 / "train").rglob("*.webm"))) is None:
        pytest.skip("imageio-ffmpeg missing")
    out = tmp_path / "pv"
    res = cli("preview", str(kinetics_vp9), "--out", str(out), "--num", "8", "--size", "32", "48", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert "DALI CPU for VP8/VP9/MJPEG (fn.experimental.readers.video in windows" in res.stdout
    # DALI's YUV conversion and resampling differ from ffmpeg + Pillow by a few levels; the mean
    # absolute error is checked in every frame of every clip (acceptance: at most 6 levels)
    check_against_ffmpeg(out, kinetics_vp9, (32, 48), mean_tol=5.0, max_tol=90)


def test_preview_of_a_folder_without_manifest_says_what_to_do(tmp_path):
    (tmp_path / "c").mkdir()
    res = cli("preview", str(tmp_path), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "run `bsp-dali index" in res.stderr
