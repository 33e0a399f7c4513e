"""Heads and the three integrations of the BSP paper's Sec. 3.4.

Every model maps a clip (N, C, T, H, W) to a dict of outputs; ``loss`` functions take that dict and
a batch from ``bsp_dali.BSPIterator``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import TSMEncoder


class ClipClassifier(nn.Module):
    """Encoder + linear classifier on the clip feature: the 4-way BSP task (default), the binary
    variants (``num_classes=2``) or action classification."""

    def __init__(self, encoder: TSMEncoder, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.new_fc = nn.Linear(encoder.feature_dim, num_classes)  # the TSM checkpoints' name

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.encoder.clip_features(video)  # (N, D)
        return {"feature": feat, "logits": self.new_fc(self.dropout(feat))}


class FrameRegressor(nn.Module):
    """Per-frame change-point regression: a score per frame, trained against the Gaussian heatmap
    with smooth L1 (the paper's alternative pretext)."""

    def __init__(self, encoder: TSMEncoder):
        super().__init__()
        self.encoder = encoder
        self.new_fc = nn.Linear(encoder.feature_dim, 1)

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        frames = self.encoder(video)  # (N, T, D)
        return {"feature": frames.mean(1), "heatmap": self.new_fc(frames).squeeze(-1)}  # (N, T)


class TwoHead(nn.Module):
    """One shared backbone, an action head and a boundary head, trained jointly."""

    def __init__(self, encoder: TSMEncoder, num_actions: int, num_boundary: int = 4, dropout: float = 0.5):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.action_fc = nn.Linear(encoder.feature_dim, num_actions)
        self.boundary_fc = nn.Linear(encoder.feature_dim, num_boundary)

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.encoder.clip_features(video)
        f = self.dropout(feat)
        return {"feature": feat, "action_logits": self.action_fc(f), "boundary_logits": self.boundary_fc(f)}


class TwoStream(nn.Module):
    """Concatenated penultimate features of separately trained encoders (vanilla, then BSP)."""

    def __init__(self, encoders: list[TSMEncoder]):
        super().__init__()
        if not encoders:
            raise ValueError("TwoStream needs at least one encoder")
        self.encoders = nn.ModuleList(encoders)
        self.feature_dim = sum(e.feature_dim for e in encoders)

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"feature": torch.cat([e.clip_features(video) for e in self.encoders], dim=1)}


class Distill(nn.Module):
    """Feature distillation: a student ``fs`` with pointwise projections ``h1``, ``h2`` matched to two
    frozen teachers (vanilla ``fv`` and BSP ``fb``), plus an action classifier on the student.

    loss = ||fv(x) - h1(fs(x))||^2 + ||fb(x) - h2(fs(x))||^2 + CE(action)
    """

    def __init__(self, student: TSMEncoder, vanilla: TSMEncoder, bsp: TSMEncoder, num_actions: int):
        super().__init__()
        self.student = student
        self.h1 = nn.Linear(student.feature_dim, vanilla.feature_dim)
        self.h2 = nn.Linear(student.feature_dim, bsp.feature_dim)
        self.classifier = nn.Linear(student.feature_dim, num_actions)
        self.teachers = nn.ModuleDict({"vanilla": vanilla, "bsp": bsp})
        for p in self.teachers.parameters():
            p.requires_grad_(False)
        self.teachers.eval()

    def train(self, mode: bool = True) -> "Distill":
        super().train(mode)
        self.teachers.eval()  # frozen teachers keep their BatchNorm statistics
        return self

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        fs = self.student.clip_features(video)
        with torch.no_grad():
            fv = self.teachers["vanilla"].clip_features(video)
            fb = self.teachers["bsp"].clip_features(video)
        return {"feature": fs, "action_logits": self.classifier(fs), "h1": self.h1(fs), "h2": self.h2(fs),
                "fv": fv, "fb": fb}


# ---------------------------------------------------------------------------------- losses
def classification_loss(out: dict, batch: dict, key: str = "label") -> torch.Tensor:
    return F.cross_entropy(out["logits"].float(), batch[key])


def regression_loss(out: dict, batch: dict) -> torch.Tensor:
    return F.smooth_l1_loss(out["heatmap"].float(), batch["heatmap"])


def two_head_loss(out_bsp: dict, bsp_batch: dict, out_action: dict, action_batch: dict,
                  boundary_weight: float = 1.0) -> torch.Tensor:
    return (F.cross_entropy(out_action["action_logits"].float(), action_batch["label"])
            + boundary_weight * F.cross_entropy(out_bsp["boundary_logits"].float(), bsp_batch["label"]))


def distill_loss(out: dict, batch: dict) -> torch.Tensor:
    mse = ((out["fv"].float() - out["h1"].float()) ** 2).sum(1).mean() + \
          ((out["fb"].float() - out["h2"].float()) ** 2).sum(1).mean()
    return mse + F.cross_entropy(out["action_logits"].float(), batch["label"])
