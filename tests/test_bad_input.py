"""Bad input given to the commands: unwritable outputs, moved or wrong manifests, videos that stop
decoding after indexing (review-cli items 6, 8, 9, 10, 12). Each ends in one line naming the file
and the reason, or in the bad file being excluded, never in a traceback."""

import json
import logging
import shutil

import pytest

from bsp_dali.data.index import UnwritablePath, ensure_writable_dir, ensure_writable_file
from bsp_dali.data.ingest import IngestError, MANIFEST_NAME, load_data
from conftest import run_cli, small_kinetics


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """An indexed folder of 2 classes x 3 H.264 videos (30..40 frames)."""
    return small_kinetics(tmp_path_factory.mktemp("bad_input_data"), num_classes=2, per_class=3, frames=(30, 40))


def _one_error_line(res):
    """The command failed with one ``error:`` line and no traceback; returns that line."""
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


# ---------------------------------------------------------------------------------- 6: unwritable outputs
def test_writable_helpers_name_the_path_and_the_reason(tmp_path):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    with pytest.raises(UnwritablePath, match=r"--out /sys/pv cannot be written: cannot create the folder"):
        ensure_writable_dir("/sys/pv", "--out")
    with pytest.raises(UnwritablePath, match=r"--out /proc/in cannot be written"):
        ensure_writable_dir("/proc/in", "--out")
    with pytest.raises(UnwritablePath, match=f"--out {a_file}/sub cannot be written: {a_file} is a file"):
        ensure_writable_dir(a_file / "sub", "--out")
    with pytest.raises(UnwritablePath, match=f"{a_file} cannot be written: it is a file, not a folder"):
        ensure_writable_dir(a_file, "--out")
    with pytest.raises(UnwritablePath, match=r"--report /proc/x.json cannot be written: cannot create a file in /proc"):
        ensure_writable_file("/proc/x.json", "--report")
    with pytest.raises(UnwritablePath, match=f"{a_file} is a file, not a folder"):
        ensure_writable_file(a_file / "deeper" / "m.json", "--out")
    with pytest.raises(UnwritablePath, match="it is a folder"):
        ensure_writable_file(tmp_path, "--out")
    # writable: the folder is made, a file's missing folders are not (the writer makes them)
    assert ensure_writable_dir(tmp_path / "new" / "dir", "--out").is_dir()
    assert ensure_writable_file(tmp_path / "later" / "m.json", "--out") == tmp_path / "later" / "m.json"
    assert not (tmp_path / "later").exists()
    assert sorted(p.name for p in (tmp_path / "new" / "dir").iterdir()) == []  # the probe file is gone


@pytest.mark.parametrize("args, named", [
    (["index", "{data}", "--out", "/proc/x.json"], "--out /proc/x.json cannot be written"),
    (["index", "{data}", "--out", "{tmp}/m.json", "--report", "{afile}/r.json"], "--report {afile}/r.json cannot be written"),
    (["preview", "{data}", "--out", "/sys/pv", "--num", "1", "--device", "cpu"], "--out /sys/pv cannot be written"),
    (["preview", "{data}", "--out", "{afile}/pv", "--num", "1", "--device", "cpu"], "{afile} is a file, not a folder"),
    (["transcode", "{data}", "/sys/tc"], "DST /sys/tc cannot be written"),
    (["inspect", "{data}", "--untrained", "--out", "/sys/in", "--device", "cpu"], "--out /sys/in cannot be written"),
])
def test_unwritable_output_is_one_line_before_any_work(tmp_path, small, args, named):
    afile = tmp_path / "afile"
    afile.write_text("x")
    fill = {"data": small, "tmp": tmp_path, "afile": afile}
    res = run_cli(*[a.format(**fill) for a in args], timeout=300)
    assert named.format(**fill) in _one_error_line(res)
    assert not (tmp_path / "m.json").exists()  # nothing written, nothing probed
    if args[0] == "index":
        # an --out in a folder that is not there yet is made (before, the manifest write failed after probing)
        res = run_cli("index", small, "--out", tmp_path / "new" / "m.json", "--workers", "1")
        assert res.returncode == 0, res.stderr[-3000:]
        assert (tmp_path / "new" / "m.json").is_file() and (tmp_path / "new" / "m.report.json").is_file()


# ---------------------------------------------------------------------------------- 9: a moved manifest
def test_manifest_of_a_moved_folder_uses_its_own_folder(tmp_path, small):
    moved = tmp_path / "moved_dst"
    shutil.copytree(small, moved)
    recorded = json.loads((moved / MANIFEST_NAME).read_text())["root"]
    assert recorded == str(small.resolve())
    gone = tmp_path / "moved_src"
    # the manifest's root is gone: rewrite it to a folder that does not exist (as after `mv`)
    m = json.loads((moved / MANIFEST_NAME).read_text())
    m["root"] = str(gone)
    (moved / MANIFEST_NAME).write_text(json.dumps(m))
    index = load_data(moved / MANIFEST_NAME)
    assert index.root == str(moved.resolve()) and len(index) == 6
    assert all((moved / v.path).is_file() for v in index.videos)
    # the folder form kept working before and still does
    assert load_data(moved).root == str(moved.resolve())


def test_manifest_whose_root_and_videos_are_gone_is_one_clear_error(tmp_path, small):
    lone = tmp_path / "elsewhere" / "manifest.json"
    lone.parent.mkdir()
    m = json.loads((small / MANIFEST_NAME).read_text())
    m["root"] = str(tmp_path / "moved_src")
    lone.write_text(json.dumps(m))
    with pytest.raises(IngestError) as e:
        load_data(lone)
    assert str(e.value) == f"manifest root {tmp_path / 'moved_src'} does not exist (folder moved? run bsp-dali index again)"
    res = run_cli("preview", lone, "--out", tmp_path / "pv", "--num", "1", "--device", "cpu")
    assert "manifest root" in _one_error_line(res) and "excluding" not in res.stderr


# ---------------------------------------------------------------------------------- 10: not a manifest
def test_video_or_other_json_given_as_manifest_is_named(tmp_path, small):
    video = next(small.rglob("*.mp4"))
    other = tmp_path / "other.json"
    other.write_text('{"a": 1}')
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    for path in (video, other, listed):
        with pytest.raises(IngestError) as e:
            load_data(path)
        assert str(e.value) == (f"{path} is not a bsp-dali manifest (JSON); give a folder indexed with "
                                "`bsp-dali index`, or its manifest")
    res = run_cli("preview", video, "--out", tmp_path / "pv", "--num", "1", "--device", "cpu")
    line = _one_error_line(res)
    assert str(video) in line and "is not a bsp-dali manifest" in line and "codec" not in line
    res = run_cli("inspect", other, "--untrained", "--out", tmp_path / "in", "--device", "cpu")
    assert f"{other} is not a bsp-dali manifest" in _one_error_line(res)


def test_extract_input_forms(tmp_path, small):
    from bsp_dali.tools.extract import discover_videos

    video = next(small.rglob("*.mp4"))
    root, entries = discover_videos(video)  # one video is a natural input of extract
    assert root == video.parent and [e.path for e in entries] == [video.name] and not entries[0].missing
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(IngestError, match=f"{binary} is not a list file .text., a video or a bsp-dali manifest"):
        discover_videos(binary)
    other = tmp_path / "other.json"
    other.write_text('{"a": 1}')
    with pytest.raises(IngestError, match=f"{other} is not a bsp-dali manifest"):
        discover_videos(other)


# ---------------------------------------------------------------------------------- 8: videos that stopped decoding
def _broken_copy(tmp_path, small):
    data = tmp_path / "stale"
    shutil.copytree(small, data)
    return data, load_data(data)


def test_inspect_excludes_a_video_that_stopped_decoding(tmp_path, small):
    from bsp_dali.tools.separability import make_pairs

    data, index = _broken_copy(tmp_path, small)
    boundary, _ = make_pairs(index, 8, 4, seed=0)  # what inspect --pairs 4 --seed 0 draws first (T = 8)
    bad = index.videos[boundary[0][0].sources[0].video].path
    (data / bad).write_bytes(b"\x00" * 4000)  # after indexing
    res = run_cli("inspect", data, "--untrained", "--split", "all", "--pairs", "4", "--size", "32", "--device", "cpu",
                  "--out", tmp_path / "in", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert f"excluding {data.resolve() / bad} from inspect" in res.stderr
    result = json.loads((tmp_path / "in" / "separability.json").read_text())
    assert [e["path"] for e in result["excluded"]] == [bad]
    assert result["pairs"]["boundary"] >= 1 and result["pairs"]["non_boundary"] >= 1
    assert 0.0 <= result["encoders"]["untrained"]["separability_auc"] <= 1.0


def test_inspect_fails_clearly_when_too_few_videos_decode(tmp_path, small, caplog):
    import bsp_models

    from bsp_dali.tools.separability import inspect

    data, index = _broken_copy(tmp_path, small)
    for v in index.videos:
        if v.label == 0:  # a whole class gone: no diff_class pair can be drawn
            (data / v.path).write_bytes(b"\x00" * 4000)
    enc = bsp_models.create_encoder("resnet18", 8)
    with caplog.at_level(logging.WARNING, logger="bsp_dali.tools.separability"):
        with pytest.raises(ValueError, match="too few usable videos for inspect after excluding 3 that failed to decode"):
            inspect(index, [("untrained", enc)], tmp_path / "in", pairs=4, size=32, device="cpu")
    assert sum("excluding" in r.getMessage() for r in caplog.records) == 3


# ---------------------------------------------------------------------------------- 12: inspect's names and split
def test_inspect_encoder_names_must_be_unique(tmp_path, small):
    import bsp_models

    from bsp_dali.tools.separability import inspect

    enc = bsp_models.create_encoder("resnet18", 8)
    with pytest.raises(ValueError, match="encoder name 'good' is given more than once"):
        inspect(load_data(small), [("good", enc), ("good", enc)], tmp_path / "in", pairs=4, size=32)
    assert not (tmp_path / "in").exists()


def test_inspect_cli_name_collision_and_no_held_out_videos(tmp_path, small, tiny_checkpoint):
    good = tmp_path / "good" / "checkpoints" / "last.pt"
    good.parent.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, good)
    res = run_cli("inspect", small, "--checkpoint", good, "--checkpoint", f"good={good}", "--split", "all",
                  "--out", tmp_path / "in", "--device", "cpu", "--pairs", "4")
    assert "encoder name 'good' is given more than once" in _one_error_line(res)
    # one video per class: the checkpoint's split (val_fraction 0.5) holds none of them out
    dup = small_kinetics(tmp_path / "dup", num_classes=2, per_class=1, frames=(30, 40))
    res = run_cli("inspect", dup, "--checkpoint", good, "--out", tmp_path / "in", "--device", "cpu", "--pairs", "4")
    line = _one_error_line(res)
    assert f"none of the 2 videos of {dup} is held out by the checkpoint's split" in line and "--split all" in line


def test_index_over_a_manifest_that_is_not_one_rebuilds_it(tmp_path, small):
    """A previous manifest holding other JSON (here a list) is ignored with a warning, and the
    index is written anew; DatasetIndex.load refuses such a file as a ValueError, not a crash."""
    from bsp_dali.data.index import DatasetIndex

    data = tmp_path / "data"
    shutil.copytree(small, data)
    (data / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a bsp-dali manifest"):
        DatasetIndex.load(data / MANIFEST_NAME)
    res = run_cli("index", str(data))
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "ignoring unreadable previous manifest" in res.stderr
    assert len(load_data(data)) == 6
