"""The training settings: :class:`TrainConfig`, every field declared once with its help text and,
where it has one, its ``bsp-dali train`` option (:func:`~bsp_dali.plan.config.setting`): a new
setting is one line here, and the command's option, the ``--config`` file's "train" section and
the run's ``config.json`` follow."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass
from typing import Any

from ..plan.config import SynthesisConfig, setting
from .tasks import TASKS, describe_tasks


@dataclass
class TrainConfig:
    """Training settings. Defaults follow TSM's Kinetics recipe (Lin et al. 2019) and the BSP paper:
    SGD with momentum 0.9, lr 0.01 per 64 clips (scaled linearly with the global batch), weight
    decay 1e-4 on weights only (no decay on BatchNorm and biases), a linear warm-up of one epoch then
    cosine decay, gradient-norm clipping at 20, dropout 0.5 before the classifier, 224x224 crops.

    Each field declares its help text and, where it has one, its ``bsp-dali train`` option
    (:func:`~bsp_dali.plan.config.setting`); every field can be set in a ``--config`` file's "train"
    section."""

    data: str = setting("", help="A manifest, or a folder indexed with `bsp-dali index`.")
    out: str = setting("runs/bsp", flag="--out", metavar="PATH",
                       help="Run folder: checkpoints/, metrics.jsonl, summary.json.")
    task: str = setting("bsp", flag="--task", help=f"Training task: {describe_tasks()}.")
    arch: str = setting("resnet50", flag="--arch", help="TSM backbone: resnet18, resnet34 or resnet50.")
    epochs: int = setting(30, flag="--epochs", help="Epochs.")
    batch_size: int = setting(8, flag="--batch-size", help="Clips per process.")
    lr: float = setting(0.01, flag="--lr", help="Learning rate for a global batch of 64, scaled linearly.")
    optimizer: str = setting("sgd", help='"sgd", or "adamw" (the demo: from scratch, minutes, no ImageNet weights).')
    momentum: float = setting(0.9, help="SGD momentum.")
    weight_decay: float = setting(1e-4, flag="--weight-decay", help="Weight decay, not on BatchNorm and biases.")
    warmup_epochs: float = setting(1.0, help="Epochs of linear learning-rate warm-up.")
    schedule: str = setting("cosine", flag="--schedule", help="Learning-rate decay: cosine or step.")
    lr_steps: tuple[int, ...] = setting((20, 25), help='Epochs at which "step" divides the lr by 10.')
    clip_grad: float = setting(20.0, help="Gradient-norm clipping threshold.")
    dropout: float = setting(0.5, help="Dropout before the classifier.")
    size: int = setting(224, flag="--size", help="Crop size.")
    crop_scale: tuple[float, float] = setting((0.25, 1.0), help="Random resized crop: area fraction range.")
    epoch_size: int | None = setting(None, flag="--epoch-size",
                                     help="Clips per epoch over all ranks (default: number of videos).")
    val_fraction: float = setting(0.05, help="Fraction of each class's videos held out for validation.")
    val_clips: int = setting(512, help="Validation clips.")
    val_every: int = setting(1, help="Epochs between validations (and always after the last step).")
    checkpoint_every: int = setting(500, flag="--checkpoint-every", help="Steps between checkpoints.")
    log_every: int = setting(10, flag="--log-every", help="Steps between metric records (clips/s, data-wait, loss).")
    max_steps: int | None = setting(None, flag="--max-steps", help="Stop after this many steps.")
    max_minutes: float | None = setting(None, flag="--max-minutes", help="Stop after this much time.")
    resume: bool = setting(True, flag="--resume/--no-resume",
                           help="Continue from OUT/checkpoints/last.pt when it exists.")
    seed: int = setting(0, flag="--seed", help="Seed of the planner, the split and the weights.")
    gpus: int | None = setting(None, flag="--gpus", help="GPU processes on this node (default: all visible; 0: CPU).")
    nproc: int = setting(1, flag="--nproc", help="CPU processes (gloo) when --gpus 0.")
    nnodes: int = setting(1, flag="--nnodes", help="Nodes in the job (run the same command on each).")
    node_rank: int = setting(0, flag="--node-rank", help="This node's rank, 0..nnodes-1.")
    rdzv_endpoint: str = setting("127.0.0.1:29500", flag="--rdzv-endpoint",
                                 help="host:port of node 0, reachable from every node.")
    compile: bool = setting(False, flag="--compile", help="torch.compile the model.")
    channels_last: bool = setting(True, help="Channels-last memory format on GPU.")
    threads: int | None = setting(None, flag="--threads",
                                  help="Decode threads per process (CPU: PyAV worker processes, one per core).")
    pretrained: str | None = setting(None, flag="--pretrained", metavar="PATH",
                                     help="torchvision ImageNet ResNet weights (local .pth or .safetensors).")
    tsm_checkpoint: str | None = setting(None, flag="--tsm-checkpoint", metavar="PATH",
                                         help="Official TSM checkpoint (local .pth or .safetensors).")
    teacher_vanilla: str | None = setting(None, flag="--teacher-vanilla", metavar="PATH",
                                          help="distill: vanilla encoder checkpoint.")
    teacher_bsp: str | None = setting(None, flag="--teacher-bsp", metavar="PATH",
                                      help="distill: BSP encoder checkpoint.")
    trust_checkpoint: bool = setting(False, flag="--trust-checkpoint",
                                     help="Unpickle in full the checkpoints a weights-only load refuses: this runs "
                                          "any code they hold, so use it only for files you trust.")
    deterministic: bool = setting(False, flag="--deterministic", help="torch deterministic algorithms (for tests).")
    synthesis: SynthesisConfig = setting(default_factory=SynthesisConfig, help="Synthesis settings.")

    def __post_init__(self) -> None:
        if isinstance(self.synthesis, dict):
            self.synthesis = SynthesisConfig.from_dict(self.synthesis)
        self._check_types()
        self.lr_steps = tuple(int(v) for v in self.lr_steps)
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer ({self.optimizer!r}) must be sgd or adamw")
        if self.task not in TASKS:
            raise ValueError(f"task ({self.task!r}) must be one of {list(TASKS)}")
        from bsp_models import ARCHS

        if self.arch not in ARCHS:
            raise ValueError(f"arch ({self.arch!r}) must be one of {sorted(ARCHS)}")
        for name in ("epochs", "batch_size", "size", "checkpoint_every", "log_every", "nproc", "nnodes", "val_clips",
                     "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 1")
        for name in ("lr", "clip_grad"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be > 0")
        for name in ("momentum", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps ({self.max_steps}) must be >= 1")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes ({self.max_minutes}) must be > 0")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule ({self.schedule!r}) must be cosine or step")
        if not (0 < self.val_fraction < 0.9):
            raise ValueError(f"val_fraction ({self.val_fraction}) must be in (0, 0.9)")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads ({self.threads}) must be >= 1 (leave it out for one per core)")
        if self.gpus is not None and self.gpus < 0:
            raise ValueError(f"gpus ({self.gpus}) must be >= 0")
        if not (0 <= self.node_rank < self.nnodes):
            raise ValueError(f"node_rank ({self.node_rank}) must be in 0..nnodes-1 ({self.nnodes - 1})")
        TASKS[self.task].check(self)

    def _check_types(self) -> None:
        """Each field's value of its declared type (a --config file can hold anything): one error
        naming the setting and the value; a float setting must be finite (``nan``, ``inf``)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if f.name == "synthesis":
                continue
            value, tp = getattr(self, f.name), hints[f.name]
            optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
            if optional:
                if value is None:
                    continue
                (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
            if typing.get_origin(tp) is tuple:
                args = typing.get_args(tp)
                elem = args[0]
                if not isinstance(value, (tuple, list)) or (args[-1] is not Ellipsis and len(value) != len(args)):
                    n = "a list of" if args[-1] is Ellipsis else f"a list of {len(args)}"
                    raise ValueError(f"{f.name} ({value!r}) must be {n} {_kind(elem)}s")
                for v in value:
                    _check_value(f"{f.name}", v, elem, whole=value)
            elif tp is str and isinstance(value, os.PathLike):  # a path given as a Path
                setattr(self, f.name, os.fspath(value))
            else:
                _check_value(f.name, value, tp)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["synthesis"] = self.synthesis.to_dict()
        d["lr_steps"] = list(self.lr_steps)
        d["crop_scale"] = list(self.crop_scale)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}")
        return cls(**data)


def _kind(tp: Any) -> str:
    return {int: "integer", float: "number", bool: "boolean (true or false)", str: "string"}.get(tp, str(tp))


def _check_value(name: str, value: Any, tp: Any, whole: Any = None) -> None:
    """``value`` of the type ``tp`` (int, float, bool or str); a float finite."""
    shown = value if whole is None else whole
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ValueError(f"{name} ({shown!r}) must be finite" + (" (a list of finite numbers)" if whole is not None else ""))
    elif tp is str:
        ok = isinstance(value, str)
    else:
        return
    if not ok:
        what = f"a list of {_kind(tp)}s" if whole is not None else f"a{'n' if _kind(tp)[0] in 'aeiou' else ''} {_kind(tp)}"
        raise ValueError(f"{name} ({shown!r}) must be {what}")


__all__ = ["TrainConfig"]
