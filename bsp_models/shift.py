"""The temporal shift of TSM (Lin et al., ICCV 2019), placed in the residual branch.

Frames of a clip travel through a 2D network as a batch of ``N*T`` images. Before a residual
block's first convolution, 1/``fold_div`` of the channels is taken from the next frame and another
1/``fold_div`` from the previous frame (zeros at the clip's ends); the rest stay. The identity path
is left alone ("residual shift"), so spatial features survive while time is mixed in.
"""

from __future__ import annotations

import torch
from torch import nn


def temporal_shift(x: torch.Tensor, num_frames: int, fold_div: int = 8) -> torch.Tensor:
    """Shift channels along time. ``x``: (N*T, C, H, W) with T = ``num_frames``; same out."""
    nt, c, h, w = x.shape
    if nt % num_frames:
        raise ValueError(f"batch of {nt} frames is not a multiple of num_frames ({num_frames})")
    fold = c // fold_div
    v = x.view(nt // num_frames, num_frames, c, h, w)  # (N, T, C, H, W)
    out = torch.zeros_like(v)
    out[:, :-1, :fold] = v[:, 1:, :fold]  # channels [0, fold) come from frame t+1
    out[:, 1:, fold:2 * fold] = v[:, :-1, fold:2 * fold]  # channels [fold, 2*fold) from frame t-1
    out[:, :, 2 * fold:] = v[:, :, 2 * fold:]
    return out.view(nt, c, h, w)


class TemporalShift(nn.Module):
    """Wraps a layer (``net``, as in the official TSM checkpoints) and shifts its input."""

    def __init__(self, net: nn.Module, num_frames: int, fold_div: int = 8):
        super().__init__()
        if fold_div < 2:
            raise ValueError(f"fold_div ({fold_div}) must be >= 2: two folds are shifted")
        self.net = net
        self.num_frames = num_frames
        self.fold_div = fold_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(temporal_shift(x, self.num_frames, self.fold_div))

    def extra_repr(self) -> str:
        return f"num_frames={self.num_frames}, fold_div={self.fold_div}"


def insert_residual_shift(resnet: nn.Module, num_frames: int, fold_div: int = 8) -> int:
    """Wrap ``conv1`` of every residual block of a torchvision ResNet; returns how many."""
    count = 0
    for layer_name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(resnet, layer_name, None)
        if layer is None:
            raise ValueError(f"the backbone has no {layer_name}: not a torchvision ResNet")
        for block in layer:
            block.conv1 = TemporalShift(block.conv1, num_frames, fold_div)
            count += 1
    return count
