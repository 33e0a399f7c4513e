"""User mistakes end in one line naming the argument or file and the reason, exit status 2 (a
full disk: 3), never a traceback, and are caught before any work is done where they can be."""

import errno
import json

import pytest
import typer

from bsp_dali.cli import DISK_FULL_EXIT, USER_ERROR_EXIT, one_line_errors, user_errors
from conftest import run_cli


def assert_one_line(res, message):
    assert res.returncode == USER_ERROR_EXIT, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr


# ---------------------------------------------------------------------------------- demo
@pytest.mark.parametrize("args, message", [
    (["--size", "0"], "size (0) must be >= 1"),
    (["--classes", "7"], "classes (7) must be in 2..6"),
    (["--per-class", "3"], "per_class (3) must be >= 4"),
    (["--minutes", "0"], "minutes (0.0) must be > 0"),
    (["--gpus", "-1"], "gpus (-1) must be >= 0"),
])
def test_demo_checks_its_arguments_before_writing_any_video(tmp_path, args, message):
    out = tmp_path / "demo"
    res = run_cli("demo", "--out", str(out), *args)
    assert_one_line(res, message)
    assert not out.exists()  # nothing written, nothing indexed


# ---------------------------------------------------------------------------------- index
@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from bsp_dali.data.videogen import write_kinetics_folder

    root = tmp_path_factory.mktemp("videos")
    write_kinetics_folder(root, num_classes=2, per_class=1, codec="h264", frames=(20, 24), size=(32, 48))
    return root


def test_index_report_in_a_missing_folder_is_created(tmp_path, videos):
    manifest, report = tmp_path / "m.json", tmp_path / "no" / "r.json"
    res = run_cli("index", str(videos), "--out", str(manifest), "--report", str(report))
    assert res.returncode == 0, res.stderr
    assert len(json.loads(manifest.read_text())["videos"]) == 2 and "excluded" in json.loads(report.read_text())


def test_index_unwritable_report_is_refused_before_probing(tmp_path, videos):
    manifest, report = tmp_path / "m.json", tmp_path / "a-folder"
    report.mkdir()
    res = run_cli("index", str(videos), "--out", str(manifest), "--report", str(report))
    assert_one_line(res, f"--report {report} cannot be written: it is a folder")
    assert not manifest.exists()


def test_index_unwritable_manifest_is_one_line(tmp_path, videos):
    manifest = tmp_path / "a-folder"
    manifest.mkdir()
    res = run_cli("index", str(videos), "--out", str(manifest))
    assert_one_line(res, f"--out {manifest} cannot be written: it is a folder")
    assert list(tmp_path.iterdir()) == [manifest]  # no temporary file left behind


def test_index_probe_mode_is_parsed_by_probe_mode(tmp_path, videos):
    res = run_cli("index", str(videos), "--out", str(tmp_path / "m.json"), "--probe", "fast")
    assert_one_line(res, "--probe: probe mode 'fast' is not one of ['packets', 'decode']")
    res = run_cli("index", str(videos), "--out", str(tmp_path / "m.json"), "--probe", "Decode")
    assert res.returncode == 0, res.stderr
    assert "2 probed by decode" in res.stdout


# ---------------------------------------------------------------------------------- train, preview
def test_train_names_the_wrong_optimizer_setting(tmp_path, videos):
    res = run_cli("train", str(videos), "--out", str(tmp_path / "run"), "--lr", "-0.5")
    assert_one_line(res, "lr (-0.5) must be > 0")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value, message", [
    ("lr", 0.0, "lr (0.0) must be > 0"),
    ("clip_grad", -1.0, "clip_grad (-1.0) must be > 0"),
    ("momentum", -0.1, "momentum (-0.1) must be >= 0"),
    ("weight_decay", -0.5, "weight_decay (-0.5) must be >= 0"),
    ("weight_decay", float("nan"), "weight_decay (nan) must be finite"),
    ("max_steps", 0, "max_steps (0) must be >= 1"),
    ("max_minutes", 0.0, "max_minutes (0.0) must be > 0"),
])
def test_train_config_names_the_wrong_setting_and_its_value(field, value, message):
    from bsp_dali.train.config import TrainConfig

    with pytest.raises(ValueError) as err:
        TrainConfig(**{field: value})
    assert str(err.value) == message


def test_preview_unknown_decoder_names_the_choices_and_writes_nothing(tmp_path):
    out = tmp_path / "pv"
    res = run_cli("preview", "--out", str(out), "--device", "cpu", "--decoder", "nvdec")
    assert_one_line(res, "unknown decoder 'nvdec'; expected one of ['auto', 'dali', 'pyav']")
    assert not out.exists()


# ---------------------------------------------------------------------------------- the shared handler
def _errors():
    from bsp_models import CheckpointError

    from bsp_dali.data.index import BadVideo
    from bsp_dali.data.ingest import IngestError
    from bsp_dali.data.transcode import TranscodeError
    from bsp_dali.decode.stage import DecodeFailures
    from bsp_dali.gpu import GPUUnavailableError
    from bsp_dali.measure import MeasurementError
    from bsp_dali.plan.planner import PlanningError
    from bsp_dali.train.distributed import WorkerFailed

    return [
        (MeasurementError("the loader ended after 5 timed batches"), "the loader ended after 5 timed batches"),
        (DecodeFailures([("a/b.mp4", "truncated")]), "a/b.mp4: truncated"),
        (WorkerFailed(1, "ValueError: x", "/tmp/tb.txt"), "process of rank 1 failed"),
        (GPUUnavailableError("no CUDA device"), "no CUDA device"),
        (BadVideo("a/b.mp4", "no video stream"), "a/b.mp4: no video stream"),
        (TranscodeError("--data-gop 16: transcoding failed"), "--data-gop 16: transcoding failed"),
        (IngestError("no usable video under x"), "no usable video under x"),
        (PlanningError("diff_class needs 2 classes"), "diff_class needs 2 classes"),
        (CheckpointError("c.pt is not a bsp-dali checkpoint"), "c.pt is not a bsp-dali checkpoint"),
    ]


def test_every_user_facing_error_is_one_line_with_status_2(capsys):
    cases = _errors()
    assert all(isinstance(e, user_errors()) for e, _ in cases)
    for error, message in cases:
        with pytest.raises(typer.Exit) as exit_:
            with one_line_errors():
                raise error
        assert exit_.value.exit_code == USER_ERROR_EXIT
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err, (error, err)


def test_a_full_disk_is_status_3_and_a_bug_keeps_its_traceback(capsys):
    from bsp_dali.data.transcode import DiskFull
    from bsp_dali.train.checkpointer import CheckpointWriteError

    for error in (OSError(errno.ENOSPC, "No space left on device", "out/x.json"),
                  DiskFull("the disk is full: stopped", report=None),
                  CheckpointWriteError(errno.EIO, "checkpoint last.pt could not be written")):
        with pytest.raises(typer.Exit) as exit_:
            with one_line_errors():
                raise error
        assert exit_.value.exit_code == DISK_FULL_EXIT
        assert capsys.readouterr().err.startswith("error:")
    for bug in (KeyError("x"), RuntimeError("internal"), PermissionError(errno.EACCES, "denied")):
        with pytest.raises(type(bug)):
            with one_line_errors():
                raise bug


# ---------------------------------------------------------------------------------- bench
def test_bench_insane_row_is_a_measurement_error():
    from bsp_dali.bench.run import check_sane
    from bsp_dali.measure import MeasurementError

    check_sane({"rows": [{"row": "ok", "clips_per_s": 3.0, "halves": {"clips_per_s": (2.9, 3.1)}}]})
    with pytest.raises(MeasurementError, match="row pipe has an insane clips_per_s: nan"):
        check_sane({"rows": [{"row": "pipe", "clips_per_s": float("nan")}]})
    with pytest.raises(MeasurementError, match="insane half of clips_per_s"):
        check_sane({"rows": [{"row": "pipe", "clips_per_s": 3.0, "halves": {"clips_per_s": (0.0, 3.0)}}]})


def test_bench_data_transcode_failure_names_the_file_and_the_report(tmp_path, videos):
    import shutil

    from bsp_dali.bench.data import transcoded_data
    from bsp_dali.data.ingest import index_data
    from bsp_dali.data.transcode import REPORT_NAME, TranscodeError

    root = tmp_path / "data"
    shutil.copytree(videos, root, ignore=shutil.ignore_patterns("bsp-dali-manifest*"))
    index = index_data(root, min_frames=8, workers=1).index
    broken = root / index.videos[0].path
    broken.write_bytes(b"\0" * broken.stat().st_size)  # after indexing: the transcode cannot read it
    with pytest.raises(TranscodeError) as err:
        transcoded_data(index, 8, cache=tmp_path / "cache", workers=1)
    text = str(err.value)
    assert text.startswith("--data-gop 8: transcoding the bench data") and "failed for 1 video(s)" in text
    assert index.videos[0].path in text and REPORT_NAME in text and "\n" not in text
    assert isinstance(err.value, user_errors())


def test_version_and_small_argument_checks(tmp_path):
    from bsp_dali import __version__

    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"bsp-dali {__version__}"
    assert_one_line(run_cli("plan", "--num", "0"), "--num (0) must be >= 1")
    assert_one_line(run_cli("plan", "--start", "-5"), "--start (-5) and --epoch (0) must be >= 0")
    assert_one_line(run_cli("inspect", str(tmp_path), "--untrained", "--size", "0"),
                    "--size (0) must be >= 8 (or left out for the checkpoint's training size)")


def test_train_threads_zero_is_refused():
    from bsp_dali.train.config import TrainConfig

    with pytest.raises(ValueError, match=r"threads \(0\) must be >= 1"):
        TrainConfig(threads=0)


def test_config_errors_name_the_option():
    assert_one_line(run_cli("plan", "--tau", "0"), "--tau (0) must be an integer >= 1")
    assert_one_line(run_cli("train", "unused", "--batch-size", "0"), "--batch-size (0) must be >= 1")
