"""`bsp-dali train` on real H.264 files, on the CPU: every task, checkpoints, kill and resume, Ctrl-C, a full
disk, DDP."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cli_command, cli_env, free_port, run_cli, small_kinetics

OMP = {"OMP_NUM_THREADS": "1"}  # processes of a run share two cores


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 classes x 4 H.264 videos: half of each class is held out for validation."""
    return small_kinetics(tmp_path_factory.mktemp("train_data"), num_classes=3, per_class=4, frames=(30, 40),
                          min_frames=4)


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "train.json"
    p.write_text(json.dumps({"train": {"val_clips": 8, "log_every": 1, "val_fraction": 0.5},
                             "synthesis": {"tau": 2, "t_range": [1, 3]}}))
    return p


def train_args(data, out, cfg_file, *extra):
    return ["train", str(data), "--out", str(out), "--arch", "resnet18", "--size", "32", "--batch-size", "2",
            "--epoch-size", "8", "--epochs", "2", "--gpus", "0", "--config", str(cfg_file), "--threads", "1",
            "--rdzv-endpoint", f"127.0.0.1:{free_port()}", *extra]



def signal_after_checkpoint(args, out, step, group, sig=signal.SIGKILL):
    """Start a training run, send it ``sig`` (its whole process group when ``group``: launcher and
    workers, as a terminal's Ctrl-C does) as soon as a checkpoint of at least ``step`` exists; returns
    the checkpoint's path and the finished process (with its stdout and stderr)."""
    with open(out.parent / f"{out.name}.stdout", "w+") as fout, open(out.parent / f"{out.name}.stderr", "w+") as ferr:
        proc = subprocess.Popen(cli_command(*args), env=cli_env(**OMP), stdout=fout, stderr=ferr, text=True,
                                start_new_session=group)
        last = out / "checkpoints" / "last.pt"
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if last.is_file() and torch.load(last, weights_only=True)["step"] >= step:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be stopped"
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        proc.wait(timeout=120)
        fout.seek(0)
        ferr.seek(0)
        return last, subprocess.CompletedProcess(proc.args, proc.returncode, fout.read(), ferr.read())


def kill_after_checkpoint(args, out, step, group):
    """SIGKILL the run (with its workers when ``group``) once a checkpoint of ``step`` exists."""
    return signal_after_checkpoint(args, out, step, group)[0]


@pytest.fixture(scope="module")
def bsp_run(tmp_path_factory, data, cfg_file):
    out = tmp_path_factory.mktemp("bsp_run")
    res = run_cli(*train_args(data, out, cfg_file, "--checkpoint-every", "2", "--deterministic"), env=OMP)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_bsp_training_writes_checkpoints_metrics_and_summary(bsp_run):
    out, res = bsp_run
    assert "validation accuracy" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 8 and summary["epoch"] == 1  # 2 epochs of 8 clips / batch 2
    val = summary["validation"]
    conf = torch.tensor(val["confusion"])
    assert conf.shape == (4, 4) and int(conf.sum()) == val["val_clips"] == 8  # every held-out clip, once
    assert val["val_accuracy"] == pytest.approx(float(conf.trace()) / 8)  # the confusion's diagonal
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 8 and ckpt["config"]["model"]["arch"] == "resnet18"
    assert {"model", "optimizer", "scheduler", "rng", "loaders"} <= set(ckpt) and ckpt["loaders"][0]["bsp"]["batch"] == 4
    assert (out / "checkpoints" / "epoch-000.pt").is_file() and (out / "checkpoints" / "epoch-001.pt").is_file()
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    # the documented lr: 0.01 per 64 clips (batch 2: 0.01 * 2 / 64), 1 epoch (4 steps) of linear warm-up, then
    # cosine to 0 over the other 4 steps; "lr" at step k is the rate after k steps (the one step k + 1 uses)
    c = 0.5 ** 0.5
    factors = [2 / 4, 3 / 4, 1.0, 1.0, 0.5 * (1 + c), 0.5, 0.5 * (1 - c), 0.0]
    assert [r["lr"] for r in steps] == pytest.approx([0.01 * 2 / 64 * f for f in factors], abs=1e-12)
    for r in steps:  # one step per logging interval: its figures follow from its own timings
        assert r["interval_steps"] == 1 and r["interval_s"] > 0
        assert r["clips_per_s"] == pytest.approx(2 / r["interval_s"])  # batch 2 over the wall interval
        assert r["step_s"] + r["wait_s"] == pytest.approx(r["interval_s"])
        assert r["data_wait"] == pytest.approx(r["wait_s"] / r["interval_s"]) == pytest.approx(r["host_wait"])
    assert any("val_accuracy" in r for r in recs)
    assert not list((out / "checkpoints").glob("*.tmp*"))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_killed_run_resumes_to_the_same_weights(tmp_path, bsp_run, data, cfg_file):
    ref_out, _ = bsp_run
    ref = json.loads((ref_out / "summary.json").read_text())["weight_fingerprints"][0]
    out = tmp_path / "killed"
    args = train_args(data, out, cfg_file, "--checkpoint-every", "2", "--deterministic")
    last = kill_after_checkpoint(args, out, step=2, group=False)
    killed_at = torch.load(last, weights_only=True)["step"]
    assert 2 <= killed_at < 8
    res = run_cli(*args, env=OMP)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 8 and summary["weight_fingerprints"][0] == ref


def test_resume_from_a_version_1_checkpoint_reaches_the_same_weights(tmp_path, bsp_run, data, cfg_file):
    """Checkpoints written before weights-only loading (NumPy's RNG state pickled as an array) still
    resume, bit-identically: the end of epoch 0 of the reference run, rewritten in version 1."""
    import numpy as np

    ref_out, _ = bsp_run
    ref = json.loads((ref_out / "summary.json").read_text())["weight_fingerprints"][0]
    state = torch.load(ref_out / "checkpoints" / "epoch-000.pt", weights_only=True)
    assert state["version"] == 2 and state["step"] == 4
    for r in state["rng"]:
        n = r["numpy"]
        r["numpy"] = (n["kind"], np.array(n["key"], np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    state["version"] = 1
    out = tmp_path / "v1"
    (out / "checkpoints").mkdir(parents=True)
    torch.save(state, out / "checkpoints" / "last.pt")
    res = run_cli(*train_args(data, out, cfg_file, "--checkpoint-every", "2", "--deterministic"), env=OMP)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "is a version 1 checkpoint" in res.stderr and "resumed from" in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 8 and summary["weight_fingerprints"][0] == ref
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["version"] == 2


def test_two_cpu_processes_over_gloo_agree_on_the_weights(tmp_path, data, cfg_file):
    out = tmp_path / "ddp"
    res = run_cli(*train_args(data, out, cfg_file, "--nproc", "2", "--epochs", "1"), env=OMP)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    fps = summary["weight_fingerprints"]
    assert len(fps) == 2 and fps[0] == fps[1]
    assert summary["step"] == 2  # 8 clips / (2 ranks x 2 clips)
    # the lr scales with the global batch (2 ranks x 2 clips), not a rank's: 0.01 * 4 / 64 once warmed up
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert lrs == pytest.approx([0.01 * 4 / 64] * 2, abs=1e-12)


@pytest.mark.parametrize("task", ["action", "regression", "two-head"])
def test_other_tasks_train(tmp_path, data, cfg_file, task):
    res = run_cli(*train_args(data, tmp_path / task, cfg_file, "--task", task, "--max-steps", "2", "--epochs", "1"),
                  env=OMP)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / task / "summary.json").read_text())
    assert summary["step"] == 2 and summary["loss"] is not None
    if task == "regression":
        assert "val_smooth_l1" in summary["validation"]
    else:
        assert "val_accuracy" in summary["validation"]


def test_distillation_from_two_teachers(tmp_path, bsp_run, data, cfg_file):
    teacher = bsp_run[0] / "checkpoints" / "last.pt"
    res = run_cli(*train_args(data, tmp_path / "d", cfg_file, "--task", "distill", "--teacher-vanilla", teacher,
                              "--teacher-bsp", teacher, "--max-steps", "2", "--epochs", "1"), env=OMP)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(tmp_path / "d" / "checkpoints" / "last.pt", weights_only=True)
    teacher_w = torch.load(teacher, weights_only=True)["model"]["encoder.base_model.conv1.weight"]
    assert torch.equal(ckpt["model"]["teachers.bsp.base_model.conv1.weight"], teacher_w)


@pytest.mark.parametrize("args, message", [
    (["--task", "speed"], "task ('speed') must be one of"),
    (["--arch", "vgg"], "arch ('vgg') must be one of"),
    (["--gpus", "2"], "--gpus 2 asked for, 0 usable CUDA device(s)"),
    (["--task", "distill"], "needs --teacher-vanilla"),
    (["--batch-size", "0"], "--batch-size (0) must be >= 1"),
    (["--lr", "nan"], "--lr (nan) must be finite"),
    (["--lr", "inf"], "--lr (inf) must be finite"),
    (["--weight-decay", "nan"], "--weight-decay (nan) must be finite"),
])
def test_training_mistakes_are_one_line(tmp_path, data, cfg_file, args, message):
    a = train_args(data, tmp_path / "x", cfg_file)
    # the later option wins in typer: append the bad one
    res = run_cli(*a, *args, env=OMP)
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr and "Traceback" not in res.stderr


def test_two_process_run_killed_as_a_group_resumes_to_the_same_weights(tmp_path, data, cfg_file):
    """The whole job dies at once (a node failure): launcher and workers killed together."""
    extra = ["--nproc", "2", "--checkpoint-every", "1", "--deterministic", "--epochs", "3"]
    ref_out = tmp_path / "ref"
    res = run_cli(*train_args(data, ref_out, cfg_file, *extra), env=OMP)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = json.loads((ref_out / "summary.json").read_text())
    out = tmp_path / "killed"
    last = kill_after_checkpoint(train_args(data, out, cfg_file, *extra), out, step=2, group=True)
    assert torch.load(last, weights_only=True)["step"] < ref["step"]
    res = run_cli(*train_args(data, out, cfg_file, *extra), env=OMP)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == ref["step"] == 6
    assert summary["weight_fingerprints"] == ref["weight_fingerprints"]


# docs/training.md, "Defaults": "1 epoch linear warm-up, then cosine to 0 (--schedule step: ÷10 at
# epochs 20 and 25)". Known factors at 10 steps per epoch, 30 epochs (300 steps), by hand.
SCHEDULE_POINTS = [
    # (schedule, warm-up epochs, step, factor)
    ("cosine", 1.0, 0, 0.1), ("cosine", 1.0, 4, 0.5), ("cosine", 1.0, 9, 1.0),  # linear warm-up: (step+1)/10
    ("cosine", 1.0, 10, 1.0),  # the end of the warm-up
    ("cosine", 1.0, 155, 0.5),  # half way through the 290 steps after it: cos(pi/2)
    ("cosine", 1.0, 82.5, 0.5 * (1 + 0.5 ** 0.5)),  # a quarter of the way: cos(pi/4)
    ("cosine", 1.0, 300, 0.0), ("cosine", 1.0, 400, 0.0),  # 0 at the end, and after it
    ("cosine", 0.0, 0, 1.0), ("cosine", 0.0, 150, 0.5),  # no warm-up
    ("step", 1.0, 0, 0.1), ("step", 1.0, 9, 1.0),  # the warm-up applies to "step" as well
    ("step", 1.0, 10, 1.0), ("step", 1.0, 199, 1.0),  # epoch 19: the base rate
    ("step", 1.0, 200, 0.1), ("step", 1.0, 249, 0.1),  # epochs 20-24: ÷10
    ("step", 1.0, 250, 0.01), ("step", 1.0, 299, 0.01),  # epoch 25 on: ÷100
    ("step", 0.0, 0, 1.0), ("step", 0.0, 200, 0.1),
    ("cosine", 2.5, 0, 1 / 25), ("cosine", 2.5, 12, 13 / 25), ("cosine", 2.5, 24, 1.0),  # fractional warm-up
    ("cosine", 2.5, 25 + 275 / 2, 0.5),
]


@pytest.mark.parametrize("schedule, warm, step, factor", SCHEDULE_POINTS)
def test_learning_rate_factor_at_known_steps(schedule, warm, step, factor):
    from bsp_dali.train.config import TrainConfig
    from bsp_dali.train.loop import lr_factor

    cfg = TrainConfig(warmup_epochs=warm, schedule=schedule, epochs=30)
    assert cfg.lr_steps == (20, 25)  # the documented default
    assert lr_factor(cfg, step, 10) == pytest.approx(factor, abs=1e-9)


def test_learning_rate_schedule_never_exceeds_the_base_rate():
    from bsp_dali.train.config import TrainConfig
    from bsp_dali.train.loop import lr_factor

    for warm in (0.0, 1.0, 2.5):
        for sched in ("cosine", "step"):
            cfg = TrainConfig(warmup_epochs=warm, schedule=sched, epochs=30)
            f = [lr_factor(cfg, s, 7) for s in range(30 * 7)]
            assert max(f) <= 1.0 and min(f) >= 0.0
            assert f[-1] < 1e-3 if sched == "cosine" else f[-1] == pytest.approx(0.01)
            if warm:
                # linear warm-up: rising in equal steps to the base rate
                w = int(warm * 7)
                assert np.allclose(np.diff(f[:w]), 1 / (warm * 7)) and f[w] == 1.0
    # other step epochs move the ÷10 points
    cfg = TrainConfig(warmup_epochs=0, schedule="step", epochs=30, lr_steps=(3,))
    assert [lr_factor(cfg, s, 10) for s in (29, 30, 299)] == [1.0, pytest.approx(0.1), pytest.approx(0.1)]


def test_a_run_resumed_past_max_steps_takes_no_step(tmp_path, bsp_run, data, cfg_file):
    """Resumed at step 8 with --max-steps 6 (and one more epoch to go): it stops where it is."""
    ref_out, _ = bsp_run
    ref = json.loads((ref_out / "summary.json").read_text())["weight_fingerprints"][0]
    out = tmp_path / "past"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(ref_out / "checkpoints" / "last.pt", out / "checkpoints" / "last.pt")
    res = run_cli(*train_args(data, out, cfg_file, "--epochs", "3", "--max-steps", "6", "--deterministic"), env=OMP)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stderr and "done: 8 steps" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 8 and summary["weight_fingerprints"][0] == ref
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 8


INTERRUPTED = re.compile(r"interrupted at step (\d+); the last checkpoint is (\S+) \(step (\d+)\): run the same "
                         r"command to resume from it")


@pytest.mark.parametrize("nproc", [1, 2])
def test_ctrl_c_is_one_line_naming_the_step_and_the_checkpoint_to_resume_from(tmp_path, data, cfg_file, nproc):
    """SIGINT to the process group, as a terminal sends it to the launcher and every worker."""
    from bsp_models import load_bsp_checkpoint

    out = tmp_path / "run"
    args = train_args(data, out, cfg_file, "--nproc", str(nproc), "--checkpoint-every", "2", "--epochs", "50")
    last, res = signal_after_checkpoint(args, out, step=2, group=True, sig=signal.SIGINT)
    assert res.returncode == 130, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "SignalException" not in res.stderr, res.stderr[-3000:]
    assert "W1" not in res.stderr  # no launcher warnings (torch's log format: W<month><day> ...)
    line = res.stderr.strip().splitlines()[-1]
    m = INTERRUPTED.fullmatch(line)
    assert m, line
    step, path, saved = int(m.group(1)), Path(m.group(2)), int(m.group(3))
    assert path == last and 2 <= saved <= step
    state = load_bsp_checkpoint(path)  # intact, weights-only
    assert state["step"] == saved and len(state["loaders"]) == nproc
    assert not list(last.parent.glob("*.tmp*"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["step"] == step


def test_a_full_disk_is_one_error_and_keeps_the_last_checkpoint(tmp_path, bsp_run, data, cfg_file):
    """A tmpfs that holds the last checkpoint and a little more: the next checkpoint does not fit."""
    ref_last = bsp_run[0] / "checkpoints" / "last.pt"
    out = tmp_path / "small-disk"
    out.mkdir()
    size_mb = ref_last.stat().st_size // 2**20 + 16
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(out)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (the injected-ENOSPC tests in test_checkpointer.py always run)")
    try:
        (out / "checkpoints").mkdir()
        shutil.copy(ref_last, out / "checkpoints" / "last.pt")
        before = (out / "checkpoints" / "last.pt").read_bytes()
        res = run_cli(*train_args(data, out, cfg_file, "--epochs", "3", "--checkpoint-every", "1"), env=OMP)
        assert res.returncode == 3, res.stderr[-3000:]
        assert "Traceback" not in res.stderr
        err = " ".join(res.stderr.split())
        assert f"error: no space left to write checkpoint {out / 'checkpoints' / 'last.pt'}: it needs " in err
        assert re.search(r"it needs \d+\.\d MiB, its disk has \d+\.\d MiB free\. The previous checkpoint is kept", err)
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt"]
        assert (out / "checkpoints" / "last.pt").read_bytes() == before
    finally:
        subprocess.run(["umount", str(out)], check=True)


def test_the_interrupt_line_in_each_case():
    import pickle

    from bsp_dali.train.loop import TrainingInterrupted

    last = Path("runs/bsp/checkpoints/last.pt")
    assert TrainingInterrupted(57, last, 50).message == \
        f"interrupted at step 57; the last checkpoint is {last} (step 50): run the same command to resume from it"
    assert TrainingInterrupted(3, None, None).message == \
        "interrupted at step 3, before the first checkpoint: the same command starts the run over"
    assert TrainingInterrupted(None, last, None).message == \
        f"interrupted; the last checkpoint is {last}: run the same command to resume from it"
    again = pickle.loads(pickle.dumps(TrainingInterrupted(57, last, 50, rank=3)))
    assert isinstance(again, KeyboardInterrupt) and (again.step, again.checkpoint, again.rank) == (57, last, 3)


def test_a_config_value_of_the_wrong_type_is_one_line_naming_the_setting(tmp_path, data):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"train": {"val_clips": "many"}}))  # an option train_args does not give
    res = run_cli(*train_args(data, tmp_path / "x", cfg), env=OMP)
    assert res.returncode == 2 and "val_clips ('many') must be an integer" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and not (tmp_path / "x" / "config.json").exists()


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_keeps_the_last_good_checkpoint(tmp_path, data,
                                                                                              cfg_file):
    """lr 1e20: step 1's update blows the weights up, step 2's loss is NaN. The run stops there with
    one line; the checkpoint of step 1 stays (finite weights), none of step 2 is written."""
    out = tmp_path / "nan"
    res = run_cli(*train_args(data, out, cfg_file, "--lr", "1e20", "--checkpoint-every", "1"), env=OMP)
    assert res.returncode == 2, res.stderr[-3000:]
    assert re.search(r"the loss is (nan|inf) at step 2: training diverged", res.stderr), res.stderr[-2000:]
    assert "Lower --lr" in res.stderr and "Traceback" not in res.stderr
    assert not (out / "summary.json").exists()
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1]  # no record of the diverged step


@pytest.mark.parametrize("args, differs", [
    (["--arch", "resnet34"], "arch 'resnet18' (now 'resnet34')"),
    (["--task", "action"], "task 'bsp' (now 'action')"),
    (["--size", "48", "--tau", "3"], "size 32 (now 48), synthesis.tau 2 (now 3)"),
])
def test_resuming_with_other_settings_is_refused_before_loading_weights(tmp_path, bsp_run, data, cfg_file, args,
                                                                       differs):
    ref_out, _ = bsp_run
    out = tmp_path / "run1"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(ref_out / "checkpoints" / "last.pt", out / "checkpoints" / "last.pt")
    shutil.copy(ref_out / "config.json", out / "config.json")
    before = (out / "config.json").read_text()
    res = run_cli(*train_args(data, out, cfg_file, *args), env=OMP)
    assert res.returncode == 2, res.stderr[-3000:]
    line = f"{out / 'checkpoints' / 'last.pt'} was written by a run with other settings: {differs}"
    assert line in res.stderr and "--no-resume" in res.stderr and "another --out" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert (out / "config.json").read_text() == before  # a failed start leaves the run's config as it was
