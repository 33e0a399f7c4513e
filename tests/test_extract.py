"""`bsp-dali extract` on untrimmed videos of different lengths, sizes and codecs; `inspect`."""

import csv
import json
import math
import shutil

import h5py
import numpy as np
import pytest
import torch

from bsp_dali.data.videogen import write_index_video
from bsp_dali.plan.augment import SpatialConfig, SpatialMode, apply_cpu, draw
from bsp_dali.synth.tables import DEFAULT_MEAN, DEFAULT_STD
from bsp_dali.tools.extract import rescale, snippet_starts
from bsp_dali.tools.separability import roc_auc
from bsp_models import encoder_from_bsp_checkpoint
from conftest import run_cli

LENGTHS = {"short_a": 5, "mid_b": 20, "long_c": 33}


@pytest.fixture(scope="module")
def untrimmed(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrimmed")
    write_index_video(root / "short_a.mp4", LENGTHS["short_a"], 32, 48)
    write_index_video(root / "sub" / "mid_b.mp4", LENGTHS["mid_b"], 64, 96, seed=3)
    write_index_video(root / "long_c.webm", LENGTHS["long_c"], 48, 64, codec="vp9", seed=5)
    (root / "broken_d.mp4").write_bytes(b"not a video at all")
    return root


def test_snippet_count_rule():
    assert snippet_starts(5, 8) == [0]
    assert snippet_starts(16, 8) == [0, 8]
    assert snippet_starts(17, 8) == [0, 8, 16]
    assert len(snippet_starts(33, 4)) == math.ceil(33 / 4)


def test_rescale_is_linear_interpolation():
    f = np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0]], np.float32)
    r = rescale(f, 5)
    assert r.shape == (5, 2) and np.allclose(r[:, 0], [0, 0.5, 1, 1.5, 2]) and np.allclose(r[:, 1], [10, 15, 20, 25, 30])
    assert np.array_equal(rescale(f[:1], 4), np.repeat(f[:1], 4, axis=0))


def test_extract_hdf5_counts_order_and_bad_video(tmp_path, untrimmed, tiny_checkpoint):
    out = tmp_path / "feats.h5"
    res = run_cli("extract", str(untrimmed), "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--device", "cpu",
              "--batch-size", "3")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "3 videos written" in res.stdout and "skipped broken_d.mp4" in res.stdout
    with h5py.File(out) as f:
        assert sorted(f.keys()) == ["long_c", "mid_b", "short_a"]
        for vid, n in LENGTHS.items():
            assert f[vid].shape == (math.ceil(n / 8), 512) and f[vid].dtype == np.float32
            assert np.isfinite(f[vid][()]).all()
        feats = f["mid_b"][()]
    # snippet k of mid_b = the encoder on frames 8k..8k+7 (repeating the last), decoded apart
    import av

    with av.open(str(untrimmed / "sub" / "mid_b.mp4")) as c:
        frames = np.stack([fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)])
    enc = encoder_from_bsp_checkpoint(tiny_checkpoint)
    box = draw(np.random.default_rng(0), SpatialConfig(size=(32, 32), mode=SpatialMode.EVAL), 96, 64)[0]
    for k in range(feats.shape[0]):
        idx = [min(8 * k + i, 19) for i in range(8)]
        clip = apply_cpu(frames[idx], box, False, (32, 32)).astype(np.float32)
        x = torch.from_numpy(((clip - DEFAULT_MEAN) / DEFAULT_STD).astype(np.float32)).permute(3, 0, 1, 2)[None]
        with torch.no_grad():
            want = enc.clip_features(x)[0].numpy()
        assert np.allclose(feats[k], want, atol=1e-4), k


def test_two_stream_csv_npy_and_resume(tmp_path, untrimmed, tiny_checkpoint):
    out = tmp_path / "csv"
    res = run_cli("extract", str(untrimmed), "--checkpoint", str(tiny_checkpoint), "--checkpoint", str(tiny_checkpoint),
              "--out", str(out), "--format", "csv", "--rescale", "10", "--device", "cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    with open(out / "long_c.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == [f"f{c}" for c in range(1024)] and len(rows) == 11
    parts = tmp_path / "csv.parts"
    two = np.load(parts / "long_c.npy")
    assert two.shape == (5, 1024) and np.allclose(two[:, :512], two[:, 512:])  # the same encoder twice
    assert np.allclose(np.array(rows[1:], float), rescale(two, 10), atol=1e-4)
    # resume: nothing to do; then one part removed -> only that video again
    res = run_cli("extract", str(untrimmed), "--checkpoint", str(tiny_checkpoint), "--checkpoint", str(tiny_checkpoint),
              "--out", str(out), "--format", "csv", "--rescale", "10", "--device", "cpu")
    assert "0 videos written" in res.stdout and "3 already done" in res.stdout
    (parts / "mid_b.npy").unlink()
    res = run_cli("extract", str(untrimmed), "--checkpoint", str(tiny_checkpoint), "--checkpoint", str(tiny_checkpoint),
              "--out", str(out), "--format", "npy", "--device", "cpu")
    assert "1 videos written" in res.stdout and "2 already done" in res.stdout
    assert np.load(out / "mid_b.npy").shape == (3, 1024)


def test_extract_mistakes_are_one_line(tmp_path, untrimmed, tiny_checkpoint):
    res = run_cli("extract", str(untrimmed), "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.h5"))
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("extract", str(untrimmed), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x.h5"),
              "--snippet", "16")
    assert res.returncode == 2 and "must equal the encoders' clip length (8)" in res.stderr
    res = run_cli("extract", str(untrimmed), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x"),
              "--format", "mat")
    assert res.returncode == 2 and "format ('mat')" in res.stderr


def test_roc_auc_against_counting_pairs():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 40).astype(float)
    want = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (30 * 40)
    assert abs(roc_auc(pos, neg) - want) < 1e-12
    assert roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0


def test_inspect_writes_scores_and_plot(tmp_path, tiny_checkpoint):
    data = tiny_checkpoint.parent.parent  # the run folder; its config names the data
    cfg = json.loads((data / "config.json").read_text())
    res = run_cli("inspect", cfg["data"], "--checkpoint", f"bsp={tiny_checkpoint}", "--untrained", "--out",
              str(tmp_path / "insp"), "--pairs", "6", "--split", "all", "--device", "cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((tmp_path / "insp" / "separability.json").read_text())
    assert set(result["encoders"]) == {"bsp", "untrained"}
    for r in result["encoders"].values():  # the AUC of the written distances, by counting pairs
        pos, neg = r["distances"]["boundary"], r["distances"]["non_boundary"]
        assert len(pos) == result["pairs"]["boundary"] and len(neg) == result["pairs"]["non_boundary"]
        want = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
        assert r["separability_auc"] == pytest.approx(want, abs=1e-12)
    assert result["pairs"]["boundary"] >= 1 and (tmp_path / "insp" / "separability.png").stat().st_size > 1000


def _extract(untrimmed, out, *ckpts, extra=()):
    args = ["extract", str(untrimmed), "--out", str(out), "--device", "cpu"]
    for c in ckpts:
        args += ["--checkpoint", str(c)]
    return run_cli(*args, *extra)


def test_a_rerun_with_other_settings_or_a_retrained_checkpoint_extracts_again(tmp_path, untrimmed, tiny_checkpoint):
    ckpt = tmp_path / "c.pt"
    shutil.copy(tiny_checkpoint, ckpt)
    out = tmp_path / "ex1.h5"
    res = _extract(untrimmed, out, ckpt)
    assert res.returncode == 0 and "3 videos written" in res.stdout, res.stderr[-3000:]
    with h5py.File(out) as f:
        recorded = json.loads(f.attrs["bsp_dali_extract"])
        first = f["mid_b"][()]
    assert recorded["stride"] == 8 and recorded["snippet"] == 8 and recorded["size"] == 32
    assert recorded["checkpoints"][0]["path"] == str(ckpt) and recorded["format"] == "hdf5"
    # the same settings written out (the defaults' values): kept
    res = _extract(untrimmed, out, ckpt, extra=["--stride", "8", "--size", "32"])
    assert "0 videos written" in res.stdout and "3 already done" in res.stdout, res.stdout + res.stderr[-2000:]
    # another stride and two streams: every video again, at the new stride
    res = _extract(untrimmed, out, ckpt, ckpt, extra=["--stride", "4"])
    assert res.returncode == 0 and "3 videos written" in res.stdout and "0 already done" in res.stdout
    assert "stride 8 (now 4)" in res.stderr
    with h5py.File(out) as f:
        for vid, n in LENGTHS.items():
            assert f[vid].shape == (math.ceil(n / 4), 1024)
    # the checkpoint retrained in place (same path, other weights): every video again, new features
    res = _extract(untrimmed, out, ckpt)
    assert "3 videos written" in res.stdout
    state = torch.load(ckpt, weights_only=True)
    name = next(k for k, v in state["model"].items() if k.endswith("conv1.weight"))
    state["model"][name] = state["model"][name] * 2
    torch.save(state, ckpt)
    res = _extract(untrimmed, out, ckpt)
    assert res.returncode == 0 and "3 videos written" in res.stdout and "contents changed" in res.stderr
    with h5py.File(out) as f:
        assert f["mid_b"].shape == first.shape and not np.allclose(f["mid_b"][()], first)


@pytest.mark.parametrize("flag", ["--size", "--stride", "--workers", "--snippet"])
def test_zero_values_are_refused_even_with_a_finished_cache(tmp_path, untrimmed, tiny_checkpoint, flag):
    out = tmp_path / "ex.h5"
    parts = tmp_path / "ex.h5.parts"
    parts.mkdir()
    for vid in LENGTHS:  # a cache that would have every video "already done"
        np.save(parts / f"{vid}.npy", np.zeros((1, 512), np.float32))
    res = _extract(untrimmed, out, tiny_checkpoint, extra=[flag, "0"])
    assert res.returncode == 2 and f"{flag} (0) must be an integer >= 1" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and not out.exists()


def test_an_existing_output_that_is_not_ours_is_refused_before_any_work(tmp_path, untrimmed, tiny_checkpoint):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    res = _extract(untrimmed, notes, tiny_checkpoint)
    assert res.returncode == 2 and "exists and is not an output of bsp-dali extract" in res.stderr
    assert notes.read_text() == "hello\n" and not (tmp_path / "notes.txt.parts").exists()
    folder = tmp_path / "somedir"
    folder.mkdir()
    res = _extract(untrimmed, folder, tiny_checkpoint)  # hdf5 into a folder
    assert res.returncode == 2 and "is a folder; --format hdf5 writes a file" in res.stderr
    res = _extract(untrimmed, notes, tiny_checkpoint, extra=["--format", "npy"])  # npy into a file
    assert res.returncode == 2 and "is a file; --format npy writes a folder" in res.stderr
    (folder / "mine.txt").write_text("x")
    res = _extract(untrimmed, folder, tiny_checkpoint, extra=["--format", "csv"])  # csv into a foreign folder
    assert res.returncode == 2 and "is a folder of other files" in res.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["mine.txt"] and not (tmp_path / "somedir.parts").exists()
    assert "Traceback" not in res.stderr


def test_when_every_video_fails_nothing_is_left_behind(tmp_path, tiny_checkpoint):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.mp4").write_bytes(b"not a video")
    (bad / "b.mp4").write_bytes(b"")
    out = tmp_path / "ex8.h5"
    res = _extract(bad, out, tiny_checkpoint)
    assert res.returncode == 1 and "0 videos written" in res.stdout and "skipped a.mp4" in res.stdout
    assert "nothing written" in res.stdout + res.stderr
    assert not out.exists() and not (tmp_path / "ex8.h5.parts").exists()
