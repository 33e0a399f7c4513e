"""The training tasks, each declared in one place (a registry, like ``bsp_models``' ``ARCHS``;
STYLE.md 5): the model it trains around the TSM encoder, the streams of clips it reads, its loss,
and its validation metric.

A task is a :class:`Task` subclass registered with ``@register``:

* ``streams``: the iterator modes it reads (:class:`~bsp_dali.plan.planner.ClipMode`: ``BSP``,
  synthesized boundaries; ``ACTION``, plain clips with action labels). The first stream counts the epochs; the others are cycled alongside.
* ``build(cfg, encoder, num_actions)``: the model (``bsp_models`` heads), mapping a clip batch
  (N, C, T, H, W) to a dict of outputs.
* ``loss(forward, batches)``: the loss of one step, from the batches of every stream by name
  (``forward`` is the model, wrapped in DDP/compile as the trainer runs it).
* ``metric(cfg, num_actions, device)``: a fresh validation :class:`Metric`, or None for no
  validation.
* ``tsm_fc``: an official TSM checkpoint (``--tsm-checkpoint``) also loads its classifier.
* ``check(cfg)``: settings the task needs, checked when the configuration is built.

Heavy imports (torch, ``bsp_models``) happen where used: the CLI reads the registry's names
without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..plan.planner import ClipMode

if TYPE_CHECKING:
    from .distributed import Dist
    from .config import TrainConfig

Batch = dict[str, Any]  # a BSPIterator batch: "video" (N, C, T, H, W) float, "label", "heatmap" ...
TASKS: dict[str, "Task"] = {}


def register(cls: type["Task"]) -> type["Task"]:
    TASKS[cls.name] = cls()
    return cls


# ---------------------------------------------------------------------------------- validation metrics
class Metric:
    """Accumulates a validation metric over batches of ``stream``; ``reduce`` sums over ranks."""

    stream: ClipMode

    def update(self, out: dict[str, Any], batch: Batch) -> None:
        raise NotImplementedError

    def reduce(self, d: "Dist") -> None:
        raise NotImplementedError

    def result(self) -> dict[str, Any]:
        raise NotImplementedError


class Accuracy(Metric):
    """Top-1 accuracy and the confusion matrix (rows: true class) of the classifier output ``key``."""

    def __init__(self, stream: ClipMode, key: str, num_classes: int, device: Any):
        import torch

        self.stream, self.key, self.n = stream, key, num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, out: dict[str, Any], batch: Batch) -> None:
        import torch

        pred = out[self.key].argmax(1)
        self.confusion += torch.bincount(batch["label"] * self.n + pred, minlength=self.n * self.n).view(self.n, self.n)

    def reduce(self, d: "Dist") -> None:
        if d.world > 1:
            import torch.distributed as dist

            dist.all_reduce(self.confusion)

    def result(self) -> dict[str, Any]:
        total = int(self.confusion.sum())
        return {"val_accuracy": float(self.confusion.diag().sum()) / max(1, total), "val_clips": total,
                "confusion": self.confusion.cpu().tolist()}


class HeatmapError(Metric):
    """Mean smooth L1 error of the per-frame change-point scores ``heatmap`` against the target."""

    def __init__(self, stream: ClipMode, device: Any):
        import torch

        self.stream = stream
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, out: dict[str, Any], batch: Batch) -> None:
        import torch.nn.functional as F

        self.total += F.smooth_l1_loss(out["heatmap"].float(), batch["heatmap"], reduction="sum")
        self.count += batch["heatmap"].numel()

    def reduce(self, d: "Dist") -> None:
        if d.world > 1:
            import torch.distributed as dist

            dist.all_reduce(self.total)
            dist.all_reduce(self.count)

    def result(self) -> dict[str, Any]:
        return {"val_smooth_l1": float(self.total) / max(1, int(self.count))}


# ---------------------------------------------------------------------------------- tasks
class Task:
    name: str = ""
    help: str = ""
    streams: tuple[ClipMode, ...] = (ClipMode.BSP,)
    tsm_fc: bool = False

    def check(self, cfg: "TrainConfig") -> None:
        """Raise ValueError for settings this task cannot run with."""

    def build(self, cfg: "TrainConfig", encoder: Any, num_actions: int) -> Any:
        raise NotImplementedError

    def loss(self, forward: Callable[[Any], dict[str, Any]], batches: dict[str, Batch]) -> Any:
        raise NotImplementedError

    def metric(self, cfg: "TrainConfig", num_actions: int, device: Any) -> Metric | None:
        return None


@register
class BoundaryClassification(Task):
    """The pretext: which boundary type a synthesized clip holds (4-way, or binary with two --types)."""

    name, help, streams = "bsp", "4-way boundary", (ClipMode.BSP,)

    def build(self, cfg, encoder, num_actions):
        from bsp_models import ClipClassifier

        return ClipClassifier(encoder, cfg.synthesis.num_classes, cfg.dropout)

    def loss(self, forward, batches):
        from bsp_models import classification_loss

        b = batches[ClipMode.BSP]
        return classification_loss(forward(b["video"]), b)  # cross-entropy

    def metric(self, cfg, num_actions, device):
        return Accuracy(ClipMode.BSP, "logits", cfg.synthesis.num_classes, device)


@register
class ActionClassification(Task):
    """Action classes of plain clips: the vanilla encoder, and what the other tasks are compared with."""

    name, help, streams, tsm_fc = "action", "action classes", (ClipMode.ACTION,), True

    def build(self, cfg, encoder, num_actions):
        from bsp_models import ClipClassifier

        return ClipClassifier(encoder, num_actions, cfg.dropout)

    def loss(self, forward, batches):
        from bsp_models import classification_loss

        b = batches[ClipMode.ACTION]
        return classification_loss(forward(b["video"]), b)  # cross-entropy

    def metric(self, cfg, num_actions, device):
        return Accuracy(ClipMode.ACTION, "logits", num_actions, device)


@register
class ChangePointRegression(Task):
    """The paper's alternative pretext: a score per frame regressed onto the Gaussian heatmap
    around the change point."""

    name, help, streams = "regression", "per-frame change point", (ClipMode.BSP,)

    def build(self, cfg, encoder, num_actions):
        from bsp_models import FrameRegressor

        return FrameRegressor(encoder)

    def loss(self, forward, batches):
        from bsp_models import regression_loss

        b = batches[ClipMode.BSP]
        return regression_loss(forward(b["video"]), b)  # smooth L1

    def metric(self, cfg, num_actions, device):
        return HeatmapError(ClipMode.BSP, device)


@register
class TwoHead(Task):
    """One backbone, an action head and a boundary head, trained jointly on both streams each step."""

    name, help, streams = "two-head", "action + boundary heads", (ClipMode.BSP, ClipMode.ACTION)

    def build(self, cfg, encoder, num_actions):
        from bsp_models import TwoHead as Model

        return Model(encoder, num_actions, cfg.synthesis.num_classes, cfg.dropout)

    def loss(self, forward, batches):
        from bsp_models import two_head_loss

        b, a = batches[ClipMode.BSP], batches[ClipMode.ACTION]
        return two_head_loss(forward(b["video"]), b, forward(a["video"]), a)  # sum of both cross-entropies

    def metric(self, cfg, num_actions, device):
        return Accuracy(ClipMode.BSP, "boundary_logits", cfg.synthesis.num_classes, device)


@register
class Distillation(Task):
    """A student matched to two frozen teachers (vanilla and BSP checkpoints) plus an action loss."""

    name, help, streams = "distill", "from two teachers", (ClipMode.ACTION,)

    def check(self, cfg):
        if not (cfg.teacher_vanilla and cfg.teacher_bsp):
            raise ValueError("task distill needs --teacher-vanilla and --teacher-bsp (bsp-dali checkpoints)")

    def build(self, cfg, encoder, num_actions):
        from bsp_models import Distill, encoder_from_bsp_checkpoint

        return Distill(encoder, encoder_from_bsp_checkpoint(cfg.teacher_vanilla, trust=cfg.trust_checkpoint),
                       encoder_from_bsp_checkpoint(cfg.teacher_bsp, trust=cfg.trust_checkpoint), num_actions)

    def loss(self, forward, batches):
        from bsp_models import distill_loss

        b = batches[ClipMode.ACTION]
        return distill_loss(forward(b["video"]), b)  # ||fv - h1(fs)||^2 + ||fb - h2(fs)||^2 + CE


def describe_tasks() -> str:
    """The registered tasks in words, for the command line's help."""
    return ", ".join(f"{name} ({t.help})" for name, t in TASKS.items())


__all__ = ["Accuracy", "HeatmapError", "Metric", "TASKS", "Task", "describe_tasks", "register"]
