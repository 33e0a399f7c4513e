"""The Checkpointer on its own: atomic writes, a full disk, save and resume (same and other world
size), and the run folder's paths."""

import errno
import logging
import os
import random

import numpy as np
import pytest
import torch

from bsp_dali.train import checkpointer
from bsp_dali.train.checkpointer import (CHECKPOINT_VERSION, Checkpointer, CheckpointWriteError, atomic_save,
                                   last_checkpoint, seed_everything)
from bsp_dali.train.distributed import Dist
from bsp_models import load_bsp_checkpoint

ONE = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


class FakeLoader:
    """The iterator surface the Checkpointer uses: epoch, position, state_dict, load_state_dict,
    set_epoch."""

    def __init__(self, epoch=0, position=0):
        self.epoch, self.position, self.set_epochs = epoch, position, []

    def state_dict(self):
        return {"epoch": self.epoch, "batch": self.position}

    def load_state_dict(self, state):
        self.epoch, self.position = state["epoch"], state["batch"]

    def set_epoch(self, epoch):
        self.set_epochs.append(epoch)
        self.epoch, self.position = epoch, 0


def make_run(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def train_steps(model, opt, sched, n):
    for _ in range(n):
        model(torch.randn(5, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()


META = {"config": {"model": {"arch": "resnet18", "num_frames": 8}}, "classes": ["a", "b"]}


# ---------------------------------------------------------------------------------- atomic writes
def test_atomic_save_writes_the_whole_file_and_no_temporary(tmp_path):
    path = tmp_path / "last.pt"
    size = atomic_save({"w": torch.arange(10)}, path)
    assert size == path.stat().st_size
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(10))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def fail_fsync(err):
    def fsync(fd):
        raise OSError(err, os.strerror(err))

    return fsync


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_one_error_naming_the_file_and_the_space_and_keeps_the_last_checkpoint(
        tmp_path, monkeypatch, err):
    path = tmp_path / "last.pt"
    atomic_save({"w": torch.zeros(3)}, path)
    before = path.read_bytes()
    big = {"w": torch.ones(2**18)}  # 1 MiB of float32
    monkeypatch.setattr(checkpointer.os, "fsync", fail_fsync(err))  # the disk fills during the write
    with pytest.raises(CheckpointWriteError) as e:
        atomic_save(big, path)
    monkeypatch.undo()
    msg = str(e.value)
    assert msg.startswith(f"no space left to write checkpoint {path}: it needs 1.0 MiB, its disk has ")
    assert "The previous checkpoint is kept" in msg and "run the same command to resume" in msg
    assert e.value.errno == err and "\n" not in msg
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the temporary file is removed
    assert path.read_bytes() == before


def test_another_write_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpointer.os, "fsync", fail_fsync(errno.EIO))
    with pytest.raises(CheckpointWriteError, match=f"cannot write checkpoint {tmp_path / 'x.pt'}: Input/output error"):
        atomic_save({"w": torch.zeros(3)}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_a_write_leaves_no_half_file(tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpointer.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"w": torch.zeros(3)}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- save and resume
def test_save_then_resume_restores_weights_optimizer_scheduler_loaders_and_random_state(tmp_path):
    model, opt, sched = make_run()
    loaders = {"bsp": FakeLoader(epoch=1, position=3), "action": FakeLoader(epoch=4, position=1)}
    ckpt = Checkpointer(tmp_path, ONE, model=model, optimizer=opt, scheduler=sched, loaders=loaders, meta=META)
    assert ckpt.last == last_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.pt"
    train_steps(model, opt, sched, 3)
    seed_everything(5)
    ckpt.save(3)
    assert ckpt.saved_step == 3
    ckpt.save(3, "epoch-000.pt")
    want_draws = (random.random(), np.random.random(), torch.rand(2).tolist())
    want_out = model(torch.ones(2, 4)).tolist()
    want_lr = sched.get_last_lr()
    state = load_bsp_checkpoint(ckpt.last)  # readable weights-only, as every loader reads it
    assert state["version"] == CHECKPOINT_VERSION and state["step"] == 3 and state["classes"] == ["a", "b"]
    assert state["loaders"] == [{"bsp": {"epoch": 1, "batch": 3}, "action": {"epoch": 4, "batch": 1}}]
    assert (tmp_path / "checkpoints" / "epoch-000.pt").is_file()

    model2, opt2, sched2 = make_run(seed=1)  # other weights, a fresh optimizer
    loaders2 = {"bsp": FakeLoader(), "action": FakeLoader()}
    ckpt2 = Checkpointer(tmp_path, ONE, model=model2, optimizer=opt2, scheduler=sched2, loaders=loaders2, meta=META)
    seed_everything(99)
    assert ckpt2.resume() == 3 and ckpt2.saved_step == 3
    assert (random.random(), np.random.random(), torch.rand(2).tolist()) == want_draws
    assert model2(torch.ones(2, 4)).tolist() == want_out and sched2.get_last_lr() == want_lr
    assert opt2.state_dict()["state"][0]["momentum_buffer"].equal(opt.state_dict()["state"][0]["momentum_buffer"])
    assert (loaders2["bsp"].epoch, loaders2["bsp"].position) == (1, 3) and loaders2["bsp"].set_epochs == []


def test_nothing_to_resume_is_step_0(tmp_path):
    model, opt, sched = make_run()
    loader = FakeLoader()
    ckpt = Checkpointer(tmp_path, ONE, model=model, optimizer=opt, scheduler=sched, loaders={"bsp": loader},
                        meta=META)
    assert ckpt.resume() == 0 and ckpt.saved_step is None and loader.epoch == 0


def test_resuming_with_another_world_size_restarts_the_interrupted_epoch(tmp_path, caplog):
    """A checkpoint of 2 ranks resumed by 1 process: rank 0's iterator state, its epoch from the
    start (the shards differ), and rank 0's random state."""
    model, opt, sched = make_run()
    Checkpointer(tmp_path, ONE, model=model, optimizer=opt, scheduler=sched, loaders={"bsp": FakeLoader(2, 5)},
                 meta=META).save(11)
    state = torch.load(last_checkpoint(tmp_path), weights_only=True)
    state["loaders"] = [{"bsp": {"epoch": 2, "batch": 5}}, {"bsp": {"epoch": 2, "batch": 5}}]
    state["rng"] = state["rng"] * 2
    torch.save(state, last_checkpoint(tmp_path))
    loader = FakeLoader()
    ckpt = Checkpointer(tmp_path, ONE, model=make_run()[0], optimizer=opt, scheduler=sched, loaders={"bsp": loader},
                        meta=META)
    with caplog.at_level(logging.WARNING, logger="bsp_dali.train.checkpointer"):
        assert ckpt.resume() == 11
    assert loader.set_epochs == [2] and (loader.epoch, loader.position) == (2, 0)
    assert "resuming with 1 processes from a run with 2: epoch 2 starts over" in caplog.text


def test_an_unknown_checkpoint_version_is_refused(tmp_path):
    model, opt, sched = make_run()
    ckpt = Checkpointer(tmp_path, ONE, model=model, optimizer=opt, scheduler=sched, loaders={}, meta=META)
    ckpt.save(1)
    state = torch.load(ckpt.last, weights_only=True)
    state["version"] = 9
    torch.save(state, ckpt.last)
    with pytest.raises(ValueError, match="has checkpoint version 9, expected one of"):
        ckpt.resume()


def test_a_full_disk_during_save_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = make_run()
    ckpt = Checkpointer(tmp_path, ONE, model=model, optimizer=opt, scheduler=sched, loaders={}, meta=META)
    ckpt.save(2)
    before = ckpt.last.read_bytes()
    train_steps(model, opt, sched, 1)
    monkeypatch.setattr(checkpointer.os, "fsync", fail_fsync(errno.ENOSPC))
    with pytest.raises(CheckpointWriteError, match=f"no space left to write checkpoint {ckpt.last}"):
        ckpt.save(3)
    assert ckpt.last.read_bytes() == before and ckpt.saved_step == 2
    assert sorted(p.name for p in ckpt.folder.iterdir()) == ["last.pt"]
