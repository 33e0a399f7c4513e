"""Checkpoints from elsewhere are data, not code: every load is weights-only (or safetensors), a
refused file is one clear error, and only --trust-checkpoint unpickles it in full."""

import collections
import json
import logging
import os
import random

import numpy as np
import pytest
import torch
import torchvision

from bsp_models import (CheckpointError, ClipClassifier, UnsafeCheckpointError, create_encoder,
                        encoder_from_bsp_checkpoint, load_bsp_checkpoint, load_imagenet_resnet, load_tsm_checkpoint,
                        read_checkpoint)
from conftest import run_cli, small_kinetics

OMP = {"OMP_NUM_THREADS": "1"}


class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def write_malicious(path, marker, legacy=False):
    """A file that looks like a checkpoint (tensors, a config) and carries the payload."""
    torch.save({"model": {"w": torch.zeros(2)}, "config": {"model": {"arch": "resnet18"}}, "extra": Payload(marker)},
               path, _use_new_zipfile_serialization=not legacy)
    return path


def write_teacher(path):
    """A valid bsp-dali checkpoint of a TSM-R18 (T=8) without training: an encoder's weights and
    the config entries a reader uses."""
    torch.manual_seed(0)
    enc = create_encoder("resnet18", 8)
    torch.save({"version": 2, "model": {f"encoder.{k}": v for k, v in enc.state_dict().items()},
                "config": {"model": {"arch": "resnet18", "num_frames": 8, "fold_div": 8}}}, path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_kinetics(tmp_path_factory.mktemp("safety_data"), num_classes=2, per_class=3, frames=(24, 30))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def train_args(data, out):
    return ["train", data, "--out", out, "--arch", "resnet18", "--size", "32", "--batch-size", "2", "--epochs", "1",
            "--max-steps", "1", "--gpus", "0", "--threads", "1", "--types", "same_speed,diff_speed"]


def command(kind, data, teacher, evil, tmp_path):
    """The command line that hands ``evil`` to the option ``kind``."""
    out = tmp_path / "run"
    if kind == "pretrained":
        return train_args(data, out) + ["--pretrained", evil]
    if kind == "pretrained, 2 processes":
        return train_args(data, out) + ["--pretrained", evil, "--nproc", "2"]
    if kind == "tsm-checkpoint":
        return train_args(data, out) + ["--tsm-checkpoint", evil]
    if kind == "teacher-vanilla":
        return train_args(data, out) + ["--task", "distill", "--teacher-vanilla", evil, "--teacher-bsp", teacher]
    if kind == "teacher-bsp":
        return train_args(data, out) + ["--task", "distill", "--teacher-vanilla", teacher, "--teacher-bsp", evil]
    if kind == "resume":
        (out / "checkpoints").mkdir(parents=True)
        os.replace(evil, out / "checkpoints" / "last.pt")
        return train_args(data, out)
    if kind == "extract":
        return ["extract", data, "--checkpoint", evil, "--out", tmp_path / "feats.h5", "--device", "cpu"]
    if kind == "inspect":
        return ["inspect", data, "--checkpoint", evil, "--out", tmp_path / "insp", "--device", "cpu", "--pairs", "4"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["pretrained", "pretrained, 2 processes", "tsm-checkpoint", "teacher-vanilla",
                                  "teacher-bsp", "resume", "extract", "inspect"])
def test_a_malicious_checkpoint_runs_no_code_and_is_one_clear_error(tmp_path, data, teacher, kind):
    marker = tmp_path / "marker"
    evil = write_malicious(tmp_path / "evil.pt", marker)
    args = command(kind, data, teacher, evil, tmp_path)
    named = tmp_path / "run" / "checkpoints" / "last.pt" if kind == "resume" else evil
    res = run_cli(*args, env=OMP)
    assert not marker.exists(), f"{kind}: the checkpoint's code ran"
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    err = " ".join(res.stderr.split())
    assert f"{named} was not loaded: it holds the Python global builtins.exec" in err, err
    assert "--trust-checkpoint" in err


@pytest.mark.parametrize("kind", ["pretrained", "extract", "inspect"])
def test_trust_checkpoint_warns_then_unpickles_in_full(tmp_path, data, teacher, kind):
    """The explicit way through: a warning, then the file's code runs (here: it only writes the
    marker, and the file then fails as not fitting)."""
    marker = tmp_path / "marker"
    evil = write_malicious(tmp_path / "evil.pt", marker)
    res = run_cli(*command(kind, data, teacher, evil, tmp_path), "--trust-checkpoint", env=OMP)
    err = " ".join(res.stderr.split())
    assert "warning: --trust-checkpoint" in err and "runs any code it holds" in err
    assert f"trusted checkpoint {evil} holds the Python global builtins.exec" in err
    assert marker.read_text() == "code ran"
    assert res.returncode == 2 and "Traceback" not in res.stderr
    then = "does not fit resnet18" if kind == "pretrained" else "is not a bsp-dali training checkpoint"
    assert f"error: {evil} {then}" in err


def test_trust_cannot_come_from_a_config_file(tmp_path, data):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"train": {"trust_checkpoint": True}}))
    res = run_cli(*train_args(data, tmp_path / "run"), "--config", cfg, env=OMP)
    assert res.returncode == 2 and "trust_checkpoint can only be given as --trust-checkpoint" in res.stderr


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_every_loader_refuses_a_malicious_file(tmp_path, legacy):
    marker = tmp_path / "marker"
    evil = write_malicious(tmp_path / "evil.pth", marker, legacy=legacy)
    global_name = "exec" if legacy else "builtins.exec"  # the legacy format is not scanned ahead
    loaders = [lambda: read_checkpoint(evil), lambda: load_bsp_checkpoint(evil),
               lambda: encoder_from_bsp_checkpoint(evil),
               lambda: load_imagenet_resnet(create_encoder("resnet18", 1), evil),
               lambda: load_tsm_checkpoint(create_encoder("resnet18", 1), evil)]
    for load in loaders:
        with pytest.raises(UnsafeCheckpointError, match=f"holds the Python global {global_name}, which"):
            load()
    assert not marker.exists()


def test_a_harmless_refused_file_loads_when_trusted_and_a_broken_file_is_not_refused(tmp_path):
    import datetime

    when = datetime.date(2020, 1, 2)  # harmless, but not on the weights-only allow-list
    torch.save({"w": torch.ones(2), "saved": when}, tmp_path / "dated.pt")
    with pytest.raises(UnsafeCheckpointError, match="dated.pt was not loaded: it holds the Python global datetime"):
        read_checkpoint(tmp_path / "dated.pt")
    assert read_checkpoint(tmp_path / "dated.pt", trust=True)["saved"] == when
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pt is not a readable PyTorch checkpoint") as e:
        read_checkpoint(tmp_path / "broken.pt")
    assert not isinstance(e.value, UnsafeCheckpointError)


def test_trusted_load_logs_a_warning_naming_the_file(tmp_path, caplog):
    marker = tmp_path / "marker"
    evil = write_malicious(tmp_path / "evil.pt", marker)
    with caplog.at_level(logging.WARNING, logger="bsp_models.checkpoints"):
        state = read_checkpoint(evil, trust=True)
    assert marker.exists() and set(state) == {"model", "config", "extra"}
    assert f"trusted checkpoint {evil} holds the Python global builtins.exec" in caplog.text


# ---------------------------------------------------------------------------------- real layouts
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torchvision_imagenet_weights_load_weights_only(tmp_path, legacy):
    torch.manual_seed(3)
    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "resnet18.pth", _use_new_zipfile_serialization=not legacy)
    enc = create_encoder("resnet18", 1)
    assert sorted(load_imagenet_resnet(enc, tmp_path / "resnet18.pth")) == ["fc.bias", "fc.weight"]
    assert torch.equal(enc.base_model.layer3[0].conv1.net.weight, tv.layer3[0].conv1.weight)
    assert torch.equal(enc.base_model.bn1.running_var, tv.bn1.running_var)


def official_tsm_checkpoint(num_classes=5):
    """What the TSM repository's main.py saves: the DataParallel model's state dict inside
    "state_dict", with the epoch, the arch name, the best top-1 and the optimizer's state."""
    torch.manual_seed(4)
    src = ClipClassifier(create_encoder("resnet18", 4), num_classes).eval()
    base = src.encoder.base_model.state_dict()
    state = collections.OrderedDict((f"module.base_model.{k}", v) for k, v in base.items())
    state.update((f"module.new_fc.{k}", v) for k, v in src.new_fc.state_dict().items())
    opt = torch.optim.SGD(src.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    src(torch.randn(1, 3, 4, 32, 32))["logits"].sum().backward()
    opt.step()  # momentum buffers in the optimizer's state
    return src, {"epoch": 50, "arch": "resnet18", "state_dict": state, "optimizer": opt.state_dict(),
                 "best_prec1": 71.25}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_official_tsm_checkpoint_loads_weights_only(tmp_path, legacy):
    src, ckpt = official_tsm_checkpoint()
    torch.save(ckpt, tmp_path / "TSM_kinetics_RGB_resnet18.pth", _use_new_zipfile_serialization=not legacy)
    dst = ClipClassifier(create_encoder("resnet18", 4), 5).eval()
    load_tsm_checkpoint(dst, tmp_path / "TSM_kinetics_RGB_resnet18.pth")
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(src(x)["logits"], dst(x)["logits"])


# ---------------------------------------------------------------------------------- safetensors
def test_safetensors_weights_for_pretrained_and_tsm(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(5)
    tv = torchvision.models.resnet18(weights=None)
    save_file(tv.state_dict(), tmp_path / "resnet18.safetensors")
    enc = create_encoder("resnet18", 1)
    assert sorted(load_imagenet_resnet(enc, tmp_path / "resnet18.safetensors")) == ["fc.bias", "fc.weight"]
    assert torch.equal(enc.base_model.layer4[1].conv1.net.weight, tv.layer4[1].conv1.weight)

    src, ckpt = official_tsm_checkpoint()
    save_file({k: v.contiguous() for k, v in ckpt["state_dict"].items()}, tmp_path / "tsm.safetensors")
    dst = ClipClassifier(create_encoder("resnet18", 4), 5).eval()
    load_tsm_checkpoint(dst, tmp_path / "tsm.safetensors")
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(src(x)["logits"], dst(x)["logits"])

    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="bad.safetensors is not a readable safetensors file"):
        load_imagenet_resnet(enc, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="holds weights only"):
        load_bsp_checkpoint(tmp_path / "resnet18.safetensors")


# ---------------------------------------------------------------------------------- our own format
def draws():
    return random.random(), np.random.random(3).tolist(), torch.rand(3).tolist()


def test_rng_state_is_plain_and_restores_exactly(tmp_path):
    from bsp_dali.train.checkpointer import restore_rng, rng_state, seed_everything

    seed_everything(7)
    np.random.normal()  # a cached Gaussian in NumPy's legacy state
    state = rng_state()
    want = draws()
    torch.save({"rng": [state]}, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"][0]  # no allow-list needed
    assert loaded["numpy"]["has_gauss"] == 1
    seed_everything(8)
    restore_rng(loaded)
    assert draws() == want


def test_version_1_checkpoint_is_read_through_the_numpy_allow_list(tmp_path):
    """Version 1 (before weights-only loads) pickled np.random.get_state()'s array."""
    from bsp_dali.train.checkpointer import restore_rng, seed_everything

    seed_everything(9)
    old_rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    want = draws()
    torch.save({"version": 1, "model": {"w": torch.ones(1)},
                "config": {"model": {"arch": "resnet18", "num_frames": 8}}, "rng": [old_rng]}, tmp_path / "v1.pt")
    with pytest.raises(UnsafeCheckpointError, match="numpy"):
        read_checkpoint(tmp_path / "v1.pt")  # the generic reader has no allow-list
    loaded = load_bsp_checkpoint(tmp_path / "v1.pt")
    assert isinstance(loaded["rng"][0]["numpy"][1], np.ndarray)
    seed_everything(10)
    restore_rng(loaded["rng"][0])
    assert draws() == want
