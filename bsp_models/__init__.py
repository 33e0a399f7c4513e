"""bsp_models: TSM video encoders and the heads of boundary-sensitive pre-training.

* :func:`create_encoder` / :class:`TSMEncoder`: TSM on torchvision ResNet-18/34/50, input
  (N, C, T, H, W), per-frame features (N, T, D).
* heads: :class:`ClipClassifier` (4-way BSP, binary variants, action), :class:`FrameRegressor`
  (change-point heatmap), :class:`TwoHead`, :class:`TwoStream`, :class:`Distill` (Sec. 3.4).
* checkpoints: torchvision ImageNet weights and the official TSM layout, from local files, read as
  data (weights-only ``torch.load`` or safetensors).
"""

from .checkpoints import (CheckpointError, UnsafeCheckpointError, encoder_from_bsp_checkpoint, load_bsp_checkpoint,
                          load_imagenet_resnet, load_tsm_checkpoint, read_checkpoint)
from .encoder import ARCHS, EncoderConfig, TSMEncoder, create_encoder, register
from .heads import (ClipClassifier, Distill, FrameRegressor, TwoHead, TwoStream, classification_loss,
                    distill_loss, regression_loss, two_head_loss)
from .shift import TemporalShift, insert_residual_shift, temporal_shift

__all__ = [
    "ARCHS", "CheckpointError", "ClipClassifier", "Distill", "EncoderConfig", "FrameRegressor", "TSMEncoder",
    "TemporalShift", "TwoHead", "TwoStream", "UnsafeCheckpointError", "classification_loss", "create_encoder",
    "distill_loss", "encoder_from_bsp_checkpoint", "insert_residual_shift", "load_bsp_checkpoint",
    "load_imagenet_resnet", "load_tsm_checkpoint", "read_checkpoint", "regression_loss", "register",
    "temporal_shift", "two_head_loss",
]
