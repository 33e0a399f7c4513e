"""`bsp-dali transcode`: outputs checked frame by frame with an independent decoder (the ffmpeg
program), keyframes and picture types, resume, atomic writes, bad inputs, a full disk, layouts."""

import errno
import json
import os
import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from bsp_dali.data import transcode as tc
from bsp_dali.data.ingest import MANIFEST_NAME, build_index, index_data
from bsp_dali.data.transcode import (REPORT_NAME, DiskFull, TranscodeError, TranscodeSettings, check_output,
                                output_size, transcode_dataset)
from bsp_dali.data.videogen import index_frame, read_frame_index, write_index_video, write_kinetics_folder, write_video
from conftest import run_cli

SHORT = 48  # sources are 64x96: outputs 48x72
VFR_TIMES = [0.0]
for _k in range(1, 40):
    VFR_TIMES.append(VFR_TIMES[-1] + (0.033, 0.05, 0.1)[(_k * 7) % 3])


def ffmpeg():
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_scaled(path, w, h):
    """Every frame of ``path`` decoded and scaled to w x h by the ffmpeg program: (F, H, W, 3) uint8."""
    res = subprocess.run([ffmpeg(), "-v", "error", "-i", str(path), "-vf", f"scale={w}:{h}:flags=area", "-f",
                          "rawvideo", "-pix_fmt", "rgb24", "-fps_mode", "passthrough", "-"],
                         capture_output=True, check=True)
    return np.frombuffer(res.stdout, np.uint8).reshape(-1, h, w, 3)


def picture_types(path):
    """I/P/B of every frame in presentation order, as the ffmpeg program's showinfo filter reports them."""
    res = subprocess.run([ffmpeg(), "-hide_banner", "-i", str(path), "-vf", "showinfo", "-f", "null", "-"],
                         capture_output=True, text=True, check=True)
    return re.findall(r"iskey:[01] type:([A-Z?])", res.stderr)


def packet_pts(path):
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return sorted(p.pts for p in c.demux(s) if p.size), s.time_base


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """H.264 with B-frames, VP9, a variable-frame-rate file, and bad files of every kind."""
    import av

    root = tmp_path_factory.mktemp("tc_src")
    write_kinetics_folder(root, num_classes=2, per_class=2, frames=(30, 40))
    write_index_video(root / "train" / "class_1" / "vp9clip_000000_000010.webm", 45, 64, 96, codec="vp9", gop=12)
    write_video(root / "train" / "class_0" / "vfr_000000_000010.mp4", (index_frame(i, 64, 96) for i in range(40)),
                times=VFR_TIMES, gop=12)
    bad = root / "train" / "class_1"
    (bad / "empty_000000_000010.mp4").write_bytes(b"")
    (bad / "junk_000000_000010.mp4").write_text("not a video")
    with av.open(str(bad / "zero_000000_000010.mp4"), "w") as c:  # a video track with no frames
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        c.start_encoding()
    whole = next((root / "train" / "class_0").glob("vid*.mp4")).read_bytes()
    (bad / "cut_000000_000010.mp4").write_bytes(whole[: len(whole) // 2])
    return root


@pytest.fixture(scope="module")
def transcoded(source, tmp_path_factory):
    dst = tmp_path_factory.mktemp("tc_dst") / "out"
    res = run_cli("transcode", str(source), str(dst), "--short-side", str(SHORT), "--workers", "2")
    return dst, res


GOOD = 6  # 4 H.264 + VP9 + VFR
BAD = {"empty": "empty file", "junk": "not a video", "zero": "no video stream", "cut": "not a video or truncated"}


def test_cli_reports_every_video_and_skips_bad_ones(transcoded):
    dst, res = transcoded
    assert res.returncode == 0, res.stderr
    assert f"{GOOD} transcoded, 0 already done, {len(BAD)} failed" in res.stdout
    assert "libx264" in res.stdout  # which encoder ran, and why (no NVENC here)
    report = json.loads((dst / REPORT_NAME).read_text())
    by_name = {Path(v["src"]).name.split("_")[0]: v for v in report["videos"]}
    for name, reason in BAD.items():
        assert by_name[name]["status"] == "failed" and by_name[name]["reason"].startswith(reason), by_name[name]
        assert f"failed train/class_1/{name}_000000_000010.mp4" in res.stdout
    done = [v for v in report["videos"] if v["status"] == "done"]
    assert len(done) == GOOD and report["summary"]["done"] == GOOD
    for v in done:
        assert v["frames_in"] == v["frames_out"] >= 30 and v["size_in"] > 0 and v["size_out"] > 0 and v["seconds"] > 0
        assert v["size_out"] == (dst / v["dst"]).stat().st_size and (v["width_out"], v["height_out"]) == (72, 48)
    assert by_name["vp9clip"]["dst"] == "train/class_1/vp9clip_000000_000010.mp4"
    assert not list(dst.rglob(".*part*")), "no temporary file may be left behind"


def test_outputs_hold_the_source_frames_in_order(transcoded, source):
    """An independent decoder (the ffmpeg program) reads every frame of source and output: same
    count, frame i says index i, and the pixels match the source scaled to the output size within
    codec tolerance (and clearly not its neighbour frame)."""
    dst, _ = transcoded
    outputs = sorted(dst.rglob("*.mp4"))
    assert len(outputs) == GOOD
    for out in outputs:
        src = next(p for p in (source / out.relative_to(dst)).parent.glob(out.stem + ".*"))
        got = ffmpeg_scaled(out, 72, 48)
        want = ffmpeg_scaled(src, 72, 48)
        assert got.shape == want.shape and len(got) >= 30, out
        assert [read_frame_index(f) for f in got] == list(range(len(got))), out
        err = np.abs(got.astype(float) - want).mean(axis=(1, 2, 3))
        shifted = np.abs(got[1:].astype(float) - want[:-1]).mean(axis=(1, 2, 3))
        assert err.max() < 8, (out, err.max())
        assert err.max() < 0.5 * shifted.min(), (out, err.max(), shifted.min())


def test_outputs_index_with_a_keyframe_every_gop_and_no_bframes(transcoded):
    dst, _ = transcoded
    rep = index_data(dst, min_frames=8, workers=1)
    assert len(rep.index) == GOOD and not rep.excluded
    for v in rep.index.videos:
        assert (v.width, v.height, v.codec) == (72, 48, "h264")
        assert [k for k, _ in v.keyframes] == list(range(0, v.num_frames, 16)), v.path
        types = picture_types(dst / v.path)
        assert len(types) == v.num_frames
        assert "B" not in types
        assert [i for i, t in enumerate(types) if t == "I"] == list(range(0, v.num_frames, 16))


def test_variable_frame_rate_becomes_constant_at_the_average_rate(transcoded, source):
    dst, _ = transcoded
    report = json.loads((dst / REPORT_NAME).read_text())
    vfr = [v for v in report["videos"] if v["vfr"]]
    assert [Path(v["src"]).name for v in vfr] == ["vfr_000000_000010.mp4"]
    average = (len(VFR_TIMES) - 1) / (VFR_TIMES[-1] - VFR_TIMES[0])
    assert vfr[0]["fps_out"] == pytest.approx(average, rel=2e-3)
    src_pts, _ = packet_pts(source / vfr[0]["src"])
    assert len(set(np.diff(src_pts))) > 1
    pts, tb = packet_pts(dst / vfr[0]["dst"])
    assert len(pts) == len(VFR_TIMES) and len(set(np.diff(pts))) == 1
    assert float(1 / (np.diff(pts)[0] * tb)) == pytest.approx(average, rel=2e-3)
    constant = next(v for v in report["videos"] if v["status"] == "done" and not v["vfr"])
    assert constant["fps_out"] == 25.0


def test_rerun_skips_finished_outputs_and_redoes_damaged_ones(transcoded, source, tmp_path):
    dst = tmp_path / "out"
    shutil.copytree(transcoded[0], dst)
    settings = TranscodeSettings(short_side=SHORT)
    rep = transcode_dataset(source, dst, settings, workers=1)
    assert [len(rep.by_status(s)) for s in ("done", "skipped", "failed")] == [0, GOOD, len(BAD)]
    outs = sorted(dst.rglob("*.mp4"))
    data = outs[0].read_bytes()
    outs[0].write_bytes(data[: len(data) // 2])  # damaged: cut short
    before = {p: p.stat().st_mtime_ns for p in outs[1:]}
    rep = transcode_dataset(source, dst, settings, workers=1)
    assert [v.dst for v in rep.by_status("done")] == [str(outs[0].relative_to(dst))]
    assert {p: p.stat().st_mtime_ns for p in outs[1:]} == before  # untouched
    assert outs[0].stat().st_size == len(data)
    rep = transcode_dataset(source, dst, TranscodeSettings(short_side=SHORT, gop=8), workers=1)
    assert len(rep.by_status("done")) == GOOD  # other settings: every output is redone
    v = index_data(dst, min_frames=8, workers=1).index.videos[0]
    assert [k for k, _ in v.keyframes] == list(range(0, v.num_frames, 8))


def test_resume_check_needs_the_last_frames_to_decode(transcoded, tmp_path):
    """An output whose container is intact but whose last GOP is garbage is not 'finished'."""
    from bsp_dali.data.transcode import read_provenance

    out = sorted(transcoded[0].rglob("*.mp4"))[0]
    prov = read_provenance(out)
    assert prov is not None and check_output(out, prov) == ""
    import av

    with av.open(str(out)) as c:
        last = [p for p in c.demux(c.streams.video[0]) if p.size][-1]
        offset, size = last.pos, last.size
    data = bytearray(out.read_bytes())
    data[offset:offset + size] = bytes(size)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    assert check_output(broken, prov) != ""
    assert "frames" in check_output(out, dict(prov, frames=prov["frames"] + 1))


def test_disk_full_removes_the_partial_output_and_stops(source, tmp_path, monkeypatch):
    dst = tmp_path / "out"
    real_mux = tc._mux

    written = []

    def full_on_second_video(container, packets):  # the second video fills the disk after 5 packets
        n = real_mux(container, packets)
        if "vid0001" in container.name:
            written.append(n)
            if sum(written) >= 5:
                assert Path(container.name).exists()  # a partial output is on disk now
                raise OSError(errno.ENOSPC, "No space left on device")
        return n

    monkeypatch.setattr(tc, "_mux", full_on_second_video)
    with pytest.raises(DiskFull) as e:
        transcode_dataset(source, dst, TranscodeSettings(short_side=SHORT), workers=1)
    assert "disk full" in str(e.value) and "run the same command again" in str(e.value)
    statuses = {Path(v.src).stem.split("_")[0]: v.status for v in e.value.report.videos}
    assert statuses["vid0000x000"] == "done" and statuses["vid0001x000"] == "failed"
    assert "not_started" in statuses.values()
    assert not list(dst.rglob(".*part*"))
    finished = [v for v in e.value.report.videos if v.status == "done"]
    assert finished and all(check_output(dst / v.dst, tc.read_provenance(dst / v.dst)) == "" for v in finished)
    assert json.loads((dst / REPORT_NAME).read_text())["stopped"].startswith("disk full")
    monkeypatch.setattr(tc, "_mux", real_mux)
    rep = transcode_dataset(source, dst, TranscodeSettings(short_side=SHORT), workers=1)
    assert len(rep.by_status("skipped")) == len(finished) and len(rep.by_status("done")) == GOOD - len(finished)


@pytest.fixture()
def small_tmpfs(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_a_real_full_disk(small_tmpfs, tmp_path):
    """On a 160 kB tmpfs the first output (about 90 kB) fits, the second does not."""
    rng = np.random.default_rng(0)
    src = tmp_path / "noise"
    for k in range(3):
        write_video(src / "c" / f"n{k}.mp4", (rng.integers(0, 256, (96, 128, 3), np.uint8) for _ in range(20)), crf=30)
    res = run_cli("transcode", str(src), str(small_tmpfs / "out"), "--short-side", "96", "--crf", "18", "--workers", "1")
    assert res.returncode == 3, res.stdout + res.stderr
    assert "disk full" in res.stderr and "No space left on device" in res.stderr and "Traceback" not in res.stderr
    kept = sorted((small_tmpfs / "out").rglob("*.mp4"))
    assert [p.name for p in kept] == ["n0.mp4"]
    assert check_output(kept[0], tc.read_provenance(kept[0])) == ""
    assert not list((small_tmpfs / "out").rglob(".*part*"))  # neither a partial video nor a partial report


def test_list_file_and_annotation_csv_layouts(source, tmp_path):
    files = sorted(p for p in (source / "train").rglob("vid*.mp4"))
    lst = tmp_path / "ucf.txt"
    lst.write_text("".join(f"{p.relative_to(source)} {'a' if i % 2 else 'b'}\n" for i, p in enumerate(files))
                   + "train/class_1/vp9clip_000000_000010.webm b\n")
    dst = tmp_path / "from_list"
    res = run_cli("transcode", str(source), str(dst), "--list", str(lst), "--short-side", str(SHORT), "--workers", "1")
    assert res.returncode == 0, res.stderr
    assert f"bsp-dali index {dst} --list {dst / 'ucf.txt'}" in res.stdout
    assert "train/class_1/vp9clip_000000_000010.mp4 b" in (dst / "ucf.txt").read_text()
    rep = index_data(dst, list_file=dst / "ucf.txt", min_frames=8, workers=1)
    assert len(rep.index) == len(files) + 1 and rep.index.classes == ("a", "b") and not rep.excluded

    rows = ["label,youtube_id,time_start,time_end,split"]
    for p in files:
        yt, start, end = p.stem.rsplit("_", 2)
        rows.append(f"{p.parent.name},{yt},{int(start)},{int(end)},train")
    csv_path = tmp_path / "kinetics_train.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    dst = tmp_path / "from_csv"
    rep = transcode_dataset(source, dst, TranscodeSettings(short_side=SHORT), annotations=csv_path, split="train",
                            workers=1)
    assert rep.layout == "csv" and len(rep.by_status("done")) == len(files)
    assert (dst / "kinetics_train.csv").read_text() == csv_path.read_text()
    idx = index_data(dst, annotations=dst / "kinetics_train.csv", split="train", min_frames=8, workers=1).index
    assert len(idx) == len(files) and all(v.path.endswith(".mp4") and v.width == 72 for v in idx.videos)


def test_library_entry_point_from_an_index(source, tmp_path):
    """What the bench calls: transcode an indexed data set, then index the copy from the report."""
    src_index = index_data(source, min_frames=8, workers=1, manifest=tmp_path / "src.json").index
    dst = tmp_path / "copy"
    seen = []
    rep = transcode_dataset(src_index, dst, TranscodeSettings(short_side=SHORT), workers=2, progress=seen.append)
    assert rep.layout == "index" and len(rep.by_status("done")) == len(src_index) == GOOD and sum(seen) == GOOD
    copy = build_index(dst, rep.entries(), min_frames=8, workers=1).index
    assert copy.classes == src_index.classes
    assert [(v.path.rsplit(".", 1)[0], v.label, v.num_frames) for v in copy.videos] == \
           [(v.path.rsplit(".", 1)[0], v.label, v.num_frames) for v in src_index.videos]
    assert all(v.keyframes[1][0] == 16 for v in copy.videos)


def test_bframes_option_keeps_frames_and_keyframes(source, tmp_path):
    dst = tmp_path / "bf"
    lst = tmp_path / "one.txt"
    lst.write_text("train/class_0/vfr_000000_000010.mp4 x\n" + "".join(
        f"{p.relative_to(source)} x\n" for p in sorted((source / "train" / "class_0").glob("vid*.mp4"))))
    rep = transcode_dataset(source, dst, TranscodeSettings(short_side=SHORT, bframes=2, gop=10), list_file=lst,
                            workers=1)
    assert len(rep.by_status("done")) == 3
    for v in rep.videos:
        types = picture_types(dst / v.dst)
        assert "B" in types and len(types) == v.frames_in
        assert [i for i, t in enumerate(types) if t == "I"] == list(range(0, v.frames_in, 10))
        frames = ffmpeg_scaled(dst / v.dst, 72, 48)
        assert [read_frame_index(f) for f in frames] == list(range(v.frames_in))
    idx = index_data(dst, list_file=dst / "one.txt", min_frames=8, workers=1).index
    assert all([k for k, _ in v.keyframes] == list(range(0, v.num_frames, 10)) for v in idx.videos)


def test_audio_dropped_by_default_kept_on_request(tmp_path):
    import av

    src = tmp_path / "a"
    for name, acodec in (("aac.mp4", "aac"), ("mp2.mkv", "mp2")):  # copied / re-encoded to AAC
        p = src / "c" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(p), "w") as c:
            v = c.add_stream("libx264", rate=25)
            v.width, v.height, v.pix_fmt = 96, 64, "yuv420p"
            a = c.add_stream(acodec, rate=48000)
            a.layout = "stereo"
            for i in range(20):
                for pk in v.encode(av.VideoFrame.from_ndarray(index_frame(i, 64, 96), format="rgb24")):
                    c.mux(pk)
            for pk in v.encode():
                c.mux(pk)
            n = a.codec_context.frame_size or 1152
            for k in range(30):
                samples = np.zeros((2, n), np.float32) if acodec == "aac" else np.zeros((1, 2 * n), np.int16)
                fr = av.AudioFrame.from_ndarray(samples, format="fltp" if acodec == "aac" else "s16", layout="stereo")
                fr.sample_rate, fr.pts = 48000, k * n
                for pk in a.encode(fr):
                    c.mux(pk)
            for pk in a.encode():
                c.mux(pk)
    for keep in (False, True):
        dst = tmp_path / f"out{keep}"
        rep = transcode_dataset(src, dst, TranscodeSettings(short_side=32, keep_audio=keep), workers=1)
        assert len(rep.by_status("done")) == 2
        for out in sorted(dst.rglob("*.mp4")):
            with av.open(str(out)) as c:
                kinds = [(s.type, s.codec_context.name) for s in c.streams]
            assert kinds == ([("video", "h264"), ("audio", "aac")] if keep else [("video", "h264")]), out


def test_encoder_choice_is_explicit(source, tmp_path):
    ok, why = tc.nvenc_status()
    name, note = tc.resolve_encoder("auto")
    if not ok:  # never the case with a working NVENC: that path is unverified in this project
        assert name == "libx264" and "h264_nvenc" in note and "libx264" in note
        res = run_cli("transcode", str(source), str(tmp_path / "x"), "--encoder", "h264_nvenc")
        assert res.returncode == 2 and "--encoder h264_nvenc is not usable here" in res.stderr
        assert "Traceback" not in res.stderr and not (tmp_path / "x").exists()
    else:
        assert name == "h264_nvenc"
    assert tc.resolve_encoder("libx264")[0] == "libx264"
    res = run_cli("transcode", str(source), str(tmp_path / "x"), "--encoder", "x265")
    assert res.returncode == 2 and "--encoder ('x265') must be one of auto, libx264, h264_nvenc" in res.stderr


@pytest.mark.parametrize("size, settings, want", [
    ((340, 256), {}, (340, 256)),
    ((320, 240), {}, (342, 256)),
    ((1920, 1080), {}, (456, 256)),
    ((480, 854), {}, (256, 456)),
    ((171, 128), {"short_side": 128}, (172, 128)),
    ((101, 75), {"keep_size": True}, (100, 74)),
])
def test_output_size_keeps_aspect_with_even_sides(size, settings, want):
    assert output_size(*size, TranscodeSettings(**settings)) == want


@pytest.mark.parametrize("kwargs, message", [
    ({"gop": 0}, "--gop (0) must be an integer >= 1"),
    ({"bframes": -1}, "--bframes (-1)"),
    ({"crf": 60}, "--crf (60) must be an integer in 0..51"),
    ({"short_side": 1}, "--short-side (1)"),
    ({"preset": "warp"}, "--preset ('warp')"),
])
def test_settings_are_validated(kwargs, message):
    with pytest.raises(TranscodeError, match=re.escape(message)):
        TranscodeSettings(**kwargs)


def test_roots_must_not_nest(source, tmp_path):
    with pytest.raises(TranscodeError, match="must not be inside SRC"):
        transcode_dataset(source, source / "out")
    with pytest.raises(TranscodeError, match="does not exist"):
        transcode_dataset(tmp_path / "nowhere", tmp_path / "out")
    res = run_cli("transcode", str(source), str(source))
    assert res.returncode == 2 and "must not be SRC" in res.stderr
    assert not (source / MANIFEST_NAME).exists()


def test_rate_detection_keeps_ntsc_rates_exact(tmp_path):
    """30000/1001 in a millisecond time base (Matroska) has uneven pts steps (33, 34 ms) but is
    constant: it must not be reported as variable, and keeps its exact rate."""
    path = tmp_path / "ntsc.mkv"
    write_video(path, (index_frame(i, 32, 48) for i in range(30)), fps=30000 / 1001, gop=10)
    pts, tb = packet_pts(path)
    assert tb == Fraction(1, 1000) and len(set(np.diff(pts))) == 2
    rate, vfr, n = tc._timing(str(path))
    assert (rate, vfr, n) == (Fraction(30000, 1001), False, 30)
