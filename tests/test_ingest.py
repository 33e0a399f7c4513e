"""`bsp-dali index`: discovery from the three input forms, bad-file reports, incremental probing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bsp_dali.index import DatasetIndex
from bsp_dali.ingest import MANIFEST_NAME, IngestError, index_data, load_data
from bsp_dali.videogen import write_index_video, write_kinetics_folder

ROOT = Path(__file__).resolve().parent.parent


def cli(*args):
    return subprocess.run([sys.executable, "-m", "bsp_dali", *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)


@pytest.fixture()
def messy(tmp_path, kinetics_h264):
    """The H.264 folder plus every kind of bad file."""
    root = tmp_path / "messy"
    shutil.copytree(kinetics_h264, root, ignore=shutil.ignore_patterns("bsp-dali-manifest*"))
    train = root / "train"
    good = sorted((train / "class_0").glob("*.mp4"))[0]
    (train / "class_0" / "empty_000000_000010.mp4").write_bytes(b"")
    (train / "class_1" / "notvideo_000000_000010.mp4").write_text("this is not a video")
    data = good.read_bytes()
    (train / "class_1" / "truncated_000000_000010.mp4").write_bytes(data[: len(data) // 2])
    write_index_video(train / "class_2" / "short_000000_000010.mp4", 5, 64, 96)
    import av

    with av.open(str(train / "class_2" / "silent_000000_000010.mp4"), "w") as c:  # audio only
        s = c.add_stream("aac", rate=16000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        fr.sample_rate = 16000
        for p in list(s.encode(fr)) + list(s.encode()):
            c.mux(p)
    (train / "class_2" / "notes.txt").write_text("ignored: not a video extension")
    return root


def test_folder_layout_with_bad_files_reports_each_reason(messy):
    res = cli("index", str(messy), "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert "9 usable videos in 3 classes" in res.stdout
    report = json.loads((messy / "bsp-dali-manifest.report.json").read_text())
    reasons = {Path(e["path"]).name.split("_")[0]: e["reason"] for e in report["excluded"]}
    assert reasons["empty"].startswith("empty file")
    assert reasons["notvideo"].startswith("not a video")
    assert reasons["truncated"].startswith(("not a video or truncated", "truncated", "undecodable"))
    assert reasons["short"].startswith("too few frames: 5 < 8")
    assert reasons["silent"].startswith("no video stream")
    assert report["usable"] == 9 and report["found"] == 14
    index = load_data(messy)
    assert index.classes == ("class_0", "class_1", "class_2")
    assert all(v.codec == "h264" and v.width == 96 and v.height == 64 and v.num_frames >= 40 for v in index.videos)
    assert all(v.path.startswith("train/class_") for v in index.videos)
    assert all(v.keyframes and v.keyframes[0][0] == 0 for v in index.videos)


def test_probed_frame_counts_are_exact(indexed_h264, kinetics_h264):
    from conftest import ffmpeg_frames

    for v in indexed_h264.videos[:3]:
        frames = ffmpeg_frames(kinetics_h264 / v.path)
        if frames is None:
            pytest.skip("imageio-ffmpeg missing")
        assert len(frames) == v.num_frames


def test_incremental_reindex_probes_only_changed_files(tmp_path):
    root = tmp_path / "data"
    paths = write_kinetics_folder(root, num_classes=2, per_class=2, frames=(20, 30))
    first = index_data(root, min_frames=8, workers=1)
    assert (first.probed, first.reused) == (4, 0)
    again = index_data(root, min_frames=8, workers=1)
    assert (again.probed, again.reused) == (0, 4)
    assert again.index.videos == first.index.videos
    write_index_video(paths[0], 33, 64, 96)  # a changed file is probed again
    third = index_data(root, min_frames=8, workers=1)
    assert third.probed == 1
    assert next(v for v in third.index.videos if v.path.endswith(paths[0].name)).num_frames == 33


def test_annotation_csv_and_missing_files(tmp_path, kinetics_h264):
    root = kinetics_h264
    rows = ["label,youtube_id,time_start,time_end,split"]
    for p in sorted((root / "train").rglob("*.mp4"))[:4]:
        yt, start, end = p.stem.rsplit("_", 2)
        rows.append(f"{p.parent.name},{yt},{int(start)},{int(end)},train")
    rows.append("class_0,doesnotexist,5,15,train")
    rows.append("class_1,othersplit,5,15,val")
    csv_path = tmp_path / "kinetics.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    rep = index_data(root, annotations=csv_path, split="train", manifest=tmp_path / "m.json", min_frames=8, workers=1)
    assert len(rep.index) == 4
    assert [e["reason"] for e in rep.excluded] == ["missing: listed but not on disk"]
    assert rep.excluded[0]["path"] == os.path.join("train", "class_0", "doesnotexist_000005_000015.mp4")
    with pytest.raises(IngestError, match="is not a Kinetics annotation CSV"):
        bad = tmp_path / "bad.csv"
        bad.write_text("a,b\n1,2\n")
        index_data(root, annotations=bad, manifest=tmp_path / "m2.json")


def test_list_file(tmp_path, kinetics_h264):
    files = sorted((kinetics_h264 / "train").rglob("*.mp4"))
    lines = [f"{p.relative_to(kinetics_h264)} {'odd' if i % 2 else 'even'}" for i, p in enumerate(files)]
    lines += ["# a comment", "", "train/nowhere.mp4 even"]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(lines))
    rep = index_data(kinetics_h264, list_file=lst, manifest=tmp_path / "m.json", min_frames=8, workers=1)
    assert rep.index.classes == ("even", "odd") and len(rep.index) == len(files)
    assert rep.excluded[0]["path"] == "train/nowhere.mp4"
    lst.write_text("justonefield\n")
    with pytest.raises(IngestError, match="expected 'path label'"):
        index_data(kinetics_h264, list_file=lst, manifest=tmp_path / "m.json")


def test_whole_input_unusable_is_an_error_with_nonzero_exit(tmp_path):
    res = cli("index", str(tmp_path / "nope"))
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    res = cli("index", str(empty))
    assert res.returncode == 2 and "no video files found" in res.stderr
    (empty / "a" / "x.mp4").write_bytes(b"")
    res = cli("index", str(empty))
    assert res.returncode == 2 and "no usable video" in res.stderr and "empty file" in res.stderr
    assert not (empty / MANIFEST_NAME).exists()


def test_parallel_and_serial_probing_agree(tmp_path, kinetics_vp9):
    a = index_data(kinetics_vp9, manifest=tmp_path / "a.json", workers=1).index
    b = index_data(kinetics_vp9, manifest=tmp_path / "b.json", workers=2).index
    assert a.videos == b.videos and a.classes == b.classes
    assert {v.codec for v in a.videos} == {"vp9"}
    loaded = DatasetIndex.load(tmp_path / "a.json")
    assert loaded.videos == a.videos
