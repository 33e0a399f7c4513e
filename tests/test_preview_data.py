"""`bsp-dali preview DATA` on real files, checked against another decoder."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import ffmpeg_frames, run_cli

SIZE = (32, 48)


def check_against_ffmpeg(out, data_root, size, num, mean_tol, max_tol):
    """The preview wrote ``num`` samples (0 .. num-1, one clip each), and each clip frame = its recipe
    applied to frames decoded by the ffmpeg program and resized with Pillow to ``size`` (plain
    resize: no augmentation). ``mean_tol`` bounds the mean absolute error of every single output
    frame (not a mean over the batch), ``max_tol`` its largest pixel error."""
    H, W = size
    cache = {}
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == num and sorted(json.loads(line)["index"] for line in lines) == list(range(num))
    assert len(list((out / "clips").glob("*.npy"))) == num
    for line in lines:
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


def preview_against_ffmpeg(tmp_path, data_root, device, num, says, mean_tol, max_tol, *extra):
    """``bsp-dali preview`` of ``data_root`` on ``device`` writes ``num`` clips, names its decoder
    (``says`` in its output), and every frame of every clip matches its recipe over an ffmpeg
    decode (:func:`check_against_ffmpeg`). Skips where ffmpeg is missing. Returns the output folder."""
    first = next(p for p in sorted((data_root / "train").rglob("*")) if p.suffix in (".mp4", ".webm"))
    if ffmpeg_frames(first) is None:
        pytest.skip("imageio-ffmpeg missing")
    out = tmp_path / "pv"
    res = run_cli("preview", data_root, "--out", out, "--num", num, "--size", *SIZE, "--device", device, *extra)
    assert res.returncode == 0, res.stderr
    assert says in res.stdout
    check_against_ffmpeg(out, data_root, SIZE, num, mean_tol=mean_tol, max_tol=max_tol)
    return out


def test_preview_h264_on_cpu_matches_an_independent_decode(tmp_path, kinetics_h264, indexed_h264):
    # H.264 on the CPU: PyAV in the decode workers, resized with Pillow as the reference is: the same
    # pixels but for the rounding of the recipe's weighted sums (measured: mean <= 0.22, max 0.5 levels)
    out = preview_against_ffmpeg(tmp_path, kinetics_h264, "cpu", 10, "the rest: PyAV (CPU) in", 1.0, 4,
                                 "--gif", "--eps", "1", "4")
    assert (out / "grid.png").is_file() and len(list((out / "clips").glob("*.gif"))) == 10


def test_preview_vp9_through_dali_cpu_matches_an_independent_decode(tmp_path, kinetics_vp9, indexed_vp9):
    pytest.importorskip("nvidia.dali")
    # DALI's YUV conversion and resampling differ from ffmpeg + Pillow by a few levels; the mean
    # absolute error is checked in every frame of every clip (acceptance: at most 6 levels; measured:
    # mean <= 0.83, largest pixel error 15 at the edges of the index bands)
    preview_against_ffmpeg(tmp_path, kinetics_vp9, "cpu", 8,
                           "DALI CPU for VP8/VP9/MJPEG (fn.experimental.readers.video in windows", 2.0, 32)


def test_preview_of_a_folder_without_manifest_says_what_to_do(tmp_path):
    (tmp_path / "c").mkdir()
    res = run_cli("preview", tmp_path, "--out", tmp_path / "o")
    assert res.returncode == 2 and "run `bsp-dali index" in res.stderr
