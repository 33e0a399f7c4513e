"""`bsp-dali index`: discovery from the three input forms, bad-file reports, incremental probing."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bsp_dali.data.index import DatasetIndex
from bsp_dali.data.ingest import MANIFEST_NAME, IngestError, index_data, load_data
from bsp_dali.data.videogen import write_index_video, write_kinetics_folder
from conftest import run_cli


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
    res = run_cli("index", str(messy), "--workers", "2")
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
    res = run_cli("index", str(tmp_path / "nope"))
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    res = run_cli("index", str(empty))
    assert res.returncode == 2 and "no video files found" in res.stderr
    (empty / "a" / "x.mp4").write_bytes(b"")
    res = run_cli("index", str(empty))
    assert res.returncode == 2 and "no usable video" in res.stderr and "empty file" in res.stderr
    assert not (empty / MANIFEST_NAME).exists()


def test_parallel_and_serial_probing_agree(tmp_path, kinetics_vp9):
    a = index_data(kinetics_vp9, manifest=tmp_path / "a.json", workers=1).index
    b = index_data(kinetics_vp9, manifest=tmp_path / "b.json", workers=2).index
    assert a.videos == b.videos and a.classes == b.classes
    assert {v.codec for v in a.videos} == {"vp9"}
    loaded = DatasetIndex.load(tmp_path / "a.json")
    assert loaded.videos == a.videos


# ---------------------------------------------------------------------------------- probe modes
def _remux(src, dst, skip_packets=0, fmt=None):
    """Copy ``src``'s video packets into ``dst`` without decoding, dropping the first ``skip_packets``."""
    import av

    with av.open(str(src)) as c, av.open(str(dst), "w", format=fmt) as o:
        s = c.streams.video[0]
        out = o.add_stream_from_template(s)
        for k, p in enumerate(c.demux(s)):
            if p.size == 0 or k < skip_packets:
                continue
            p.stream = out
            o.mux(p)


@pytest.mark.parametrize("data", ["kinetics_h264", "kinetics_vp9"])
def test_packet_probe_agrees_with_full_decoding(data, request):
    """H.264 with B-frames (decode order != presentation order) and VP9: frame counts, keyframe
    tables in presentation order, sizes and codecs from packets equal what decoding finds."""
    from bsp_dali.data.probe import probe_packets, probe_video

    root = request.getfixturevalue(data)
    files = sorted(p for p in root.rglob("*") if p.suffix in (".mp4", ".webm"))
    assert len(files) >= 6
    for f in files:
        fast, full = probe_packets(f), probe_video(f)
        assert fast.method == "packets" and full.method == "decode"
        assert (fast.num_frames, fast.keyframes, fast.width, fast.height, fast.codec, fast.fps) == \
               (full.num_frames, full.keyframes, full.width, full.height, full.codec, full.fps), f
        assert len(fast.keyframes) >= 3 and fast.keyframes[0][0] == 0  # gop 12 over 40-60 frames
        assert abs(fast.duration - fast.num_frames / fast.fps) < 1.5 / fast.fps


@pytest.mark.parametrize("codec, ext", [("vp8", "webm"), ("mpeg4", "mp4"), ("mjpeg", "avi"), ("hevc", "mp4"),
                                        ("h264", "mkv"), ("h264", "avi")])
def test_packet_probe_agrees_on_other_codecs_and_containers(tmp_path, codec, ext):
    from bsp_dali.data.probe import probe_packets, probe_video

    path = tmp_path / f"v.{ext}"
    write_index_video(path, 41, 64, 96, codec=codec, gop=10)
    fast, full = probe_packets(path), probe_video(path)
    assert fast.method == "packets"
    assert (fast.num_frames, fast.keyframes, fast.width, fast.height, fast.codec) == \
           (full.num_frames, full.keyframes, full.width, full.height, full.codec) and fast.num_frames == 41


def test_h264_bframes_packets_arrive_out_of_presentation_order(kinetics_h264):
    """The agreement above is not trivial: the packets' pts are not sorted in decode order."""
    import av

    f = sorted(kinetics_h264.rglob("*.mp4"))[0]
    with av.open(str(f)) as c:
        pts = [p.pts for p in c.demux(c.streams.video[0]) if p.size]
    assert pts != sorted(pts)


def test_open_gop_keyframes_are_indexed_in_presentation_order(tmp_path):
    """HEVC with open GOPs: frames shown before a keyframe are decoded after it, so a keyframe's
    position among the packets differs from its frame index; the packet probe ranks by pts."""
    import av

    from bsp_dali.data.probe import probe_packets, probe_video
    from bsp_dali.data.videogen import index_frame

    if "libx265" not in av.codecs_available:
        pytest.skip("this PyAV build has no libx265")
    path = tmp_path / "open_gop.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx265", rate=25)
        s.width, s.height, s.pix_fmt, s.gop_size = 96, 64, "yuv420p", 12
        s.options = {"bf": "3", "x265-params": "log-level=error:open-gop=1:scenecut=0"}
        for i in range(60):
            for p in s.encode(av.VideoFrame.from_ndarray(index_frame(i, 64, 96), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with av.open(str(path)) as c:
        packets = [(p.pts, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size]
    in_decode_order = [k for k, (_, key) in enumerate(packets) if key]
    fast, full = probe_packets(path), probe_video(path)
    assert fast.method == "packets" and fast.keyframes == full.keyframes and fast.num_frames == full.num_frames == 60
    assert [k for k, _ in fast.keyframes] != in_decode_order  # the case the ranking exists for


def test_packet_probe_defers_to_decoding_where_packets_cannot_vouch(tmp_path):
    from bsp_dali import BadVideo
    from bsp_dali.data.probe import probe_packets, probe_video

    src = tmp_path / "src.mp4"
    write_index_video(src, 53, 64, 96, gop=12)
    raw = tmp_path / "raw.h264"  # an Annex B stream: its packets carry no pts
    _remux(src, raw, fmt="h264")
    r = probe_packets(raw)
    assert r.method == "decode" and "without a pts" in r.note and r.num_frames == 53
    cut = tmp_path / "cut.mkv"  # starts 2 packets in, before any keyframe: the decoder drops frames
    _remux(src, cut, skip_packets=2)
    with pytest.raises(BadVideo) as fast:
        probe_packets(cut)
    with pytest.raises(BadVideo) as full:
        probe_video(cut)
    assert fast.value.reason == full.value.reason


def test_what_the_packet_probe_catches_and_what_only_decoding_catches(tmp_path):
    """Truncated files (packets fewer than the header announces) are caught by packets; a payload
    corrupted inside intact packets is only caught by --probe decode, which re-probes files an
    earlier packet run indexed."""
    import av

    root = tmp_path / "data"
    write_kinetics_folder(root, num_classes=2, per_class=2, frames=(40, 50))
    good = root / "train" / "class_0" / "faststart_000000_000010.mp4"  # header first, as YouTube serves
    with av.open(str(good), "w", options={"movflags": "faststart"}) as c:
        from bsp_dali.data.videogen import index_frame

        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        for i in range(60):
            for p in s.encode(av.VideoFrame.from_ndarray(index_frame(i, 64, 96), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = good.read_bytes()
    (root / "train" / "class_0" / "cut_000000_000010.mp4").write_bytes(data[: int(len(data) * 0.6)])
    bad = bytearray(data)
    rng = np.random.default_rng(0)
    for i in rng.integers(len(bad) // 3, len(bad), 200):
        bad[i] ^= 0xFF
    (root / "train" / "class_1" / "garbled_000000_000010.mp4").write_bytes(bytes(bad))
    fast = index_data(root, min_frames=8, workers=1, probe="packets")
    reasons = {Path(e["path"]).name.split("_")[0]: e["reason"] for e in fast.excluded}
    assert reasons == {"cut": reasons["cut"]} and reasons["cut"].startswith("truncated")
    assert any(v.path.endswith("garbled_000000_000010.mp4") for v in fast.index.videos)  # not seen by packets
    assert {v.probe for v in fast.index.videos} == {"packets"}
    again = index_data(root, min_frames=8, workers=1, probe="packets")
    assert again.probed == 0
    full = index_data(root, min_frames=8, workers=1, probe="decode")
    assert full.probed == again.found  # packet results do not stand in for decoding
    reasons = {Path(e["path"]).name.split("_")[0]: e["reason"] for e in full.excluded}
    assert reasons["garbled"].startswith("undecodable") and reasons["cut"].startswith("truncated")
    assert {v.probe for v in full.index.videos} == {"decode"}
    assert index_data(root, min_frames=8, workers=1, probe="packets").probed == 0  # decode results do


def test_cli_probe_option(tmp_path, kinetics_vp9):
    res = run_cli("index", str(kinetics_vp9), "--out", str(tmp_path / "m.json"), "--probe", "decode", "--workers", "1")
    assert res.returncode == 0, res.stderr
    assert "probed by decode" in res.stdout
    assert {v.probe for v in DatasetIndex.load(tmp_path / "m.json").videos} == {"decode"}
    res = run_cli("index", str(kinetics_vp9), "--out", str(tmp_path / "m.json"), "--probe", "fast")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--probe: probe mode 'fast' is not one of ['packets', 'decode']" in res.stderr
