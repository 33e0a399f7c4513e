"""TrainConfig validation of values of the wrong type or non-finite, and which settings may change
when a run resumes (no training: fast)."""

import pytest

from bsp_dali.plan.config import SynthesisConfig
from bsp_dali.train.checkpointer import RESUMABLE_CHANGES, ResumeMismatch, check_resumable, resume_differences
from bsp_dali.train.config import TrainConfig


@pytest.mark.parametrize("field, value, message", [
    ("lr", float("nan"), "lr (nan) must be finite"),
    ("lr", float("inf"), "lr (inf) must be finite"),
    ("weight_decay", float("nan"), "weight_decay (nan) must be finite"),
    ("momentum", float("-inf"), "momentum (-inf) must be finite"),
    ("clip_grad", float("nan"), "clip_grad (nan) must be finite"),
    ("max_minutes", float("nan"), "max_minutes (nan) must be finite"),
    ("crop_scale", [0.25, float("inf")], "crop_scale ([0.25, inf]) must be finite"),
    ("batch_size", "big", "batch_size ('big') must be an integer"),
    ("batch_size", 2.5, "batch_size (2.5) must be an integer"),
    ("epochs", True, "epochs (True) must be an integer"),
    ("lr", "0.1", "lr ('0.1') must be a number"),
    ("resume", "yes", "resume ('yes') must be a boolean"),
    ("arch", 18, "arch (18) must be a string"),
    ("lr_steps", ["a"], "lr_steps (['a']) must be a list of integers"),
    ("crop_scale", [0.5], "crop_scale ([0.5]) must be a list of 2 numbers"),
    ("epoch_size", "all", "epoch_size ('all') must be an integer"),
])
def test_wrong_types_and_non_finite_values_name_the_setting(field, value, message):
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict({field: value})
    assert message in str(e.value)


def test_valid_values_pass_the_type_checks():
    cfg = TrainConfig.from_dict({"lr": 1, "max_minutes": 2, "epoch_size": None, "lr_steps": [3, 4],
                                 "crop_scale": [0.5, 1]})
    assert cfg.lr == 1 and cfg.crop_scale == (0.5, 1.0) and cfg.lr_steps == (3, 4)


def _saved(**kw):
    cfg = TrainConfig(arch="resnet18", **kw)
    return {**cfg.to_dict(), "model": {"arch": cfg.arch, "num_frames": cfg.synthesis.T, "fold_div": 8,
                                       "num_actions": 3, "task": cfg.task}}


def test_settings_that_may_change_on_resume_are_not_differences():
    old = _saved()
    new = _saved(max_steps=5, max_minutes=1.0, log_every=3, checkpoint_every=7, gpus=0, nproc=2, epochs=40,
                 threads=1, data="moved/folder", out="elsewhere", deterministic=True)
    assert resume_differences(old, new) == []
    check_resumable("x/last.pt", old, new)  # no error
    assert {"max_steps", "epochs", "gpus", "nproc", "checkpoint_every"} <= RESUMABLE_CHANGES


def test_settings_that_shape_the_weights_or_data_are_refused():
    old = _saved()
    new = _saved(size=48, lr=0.1, synthesis=SynthesisConfig(tau=2))
    new["model"]["num_actions"] = 5
    assert resume_differences(old, new) == [("lr", 0.01, 0.1), ("size", 224, 48), ("synthesis.tau", 4, 2),
                                            ("model.num_actions", 3, 5)]
    with pytest.raises(ResumeMismatch, match=r"x/last.pt was written by a run with other settings: lr 0.01 "
                                             r"\(now 0.1\), size 224 \(now 48\)"):
        check_resumable("x/last.pt", old, new)
    # an older checkpoint that does not record a setting is not compared on it
    del old["size"]
    assert [k for k, _, _ in resume_differences(old, new)] == ["lr", "synthesis.tau", "model.num_actions"]
