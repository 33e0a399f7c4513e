"""TSM video encoders on torchvision ResNets, behind a small registry (STYLE.md, 5).

Input (N, C, T, H, W) float; output per-frame features (N, T, D). The clip-level feature is their
mean over T (TSM's average consensus), available as ``clip_features``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .shift import insert_residual_shift

ARCHS: dict[str, Callable[[], nn.Module]] = {}


def register(name: str):
    def deco(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        ARCHS[name] = fn
        return fn

    return deco


@register("resnet18")
def _r18() -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(weights=None)


@register("resnet34")
def _r34() -> nn.Module:
    from torchvision.models import resnet34

    return resnet34(weights=None)


@register("resnet50")
def _r50() -> nn.Module:
    from torchvision.models import resnet50

    return resnet50(weights=None)


@dataclass(frozen=True)
class EncoderConfig:
    """``arch``: resnet18 | resnet34 | resnet50; ``num_frames``: T of the clips; ``fold_div``: 8
    shifts 1/8 of the channels each way (TSM's default)."""

    arch: str = "resnet18"
    num_frames: int = 8
    fold_div: int = 8

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {sorted(ARCHS)}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames ({self.num_frames}) must be >= 1")


class TSMEncoder(nn.Module):
    """A ResNet with residual temporal shifts; ``forward`` returns (N, T, D) frame features."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        net = ARCHS[config.arch]()
        insert_residual_shift(net, config.num_frames, config.fold_div)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.base_model = net  # the official TSM checkpoints' name for the backbone

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = video.shape  # (N, C, T, H, W)
        if t != self.config.num_frames:
            raise ValueError(f"clips have {t} frames, the encoder was built for {self.config.num_frames}")
        frames = video.transpose(1, 2).reshape(n * t, c, h, w)  # (N*T, C, H, W)
        feats = self.base_model(frames)  # (N*T, D)
        return feats.view(n, t, -1)  # (N, T, D)

    def clip_features(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward(video).mean(dim=1)  # (N, D)


def create_encoder(arch: str = "resnet18", num_frames: int = 8, fold_div: int = 8) -> TSMEncoder:
    return TSMEncoder(EncoderConfig(arch, num_frames, fold_div))
