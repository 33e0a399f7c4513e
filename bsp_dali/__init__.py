"""bsp-dali: boundary-sensitive pre-training (BSP) clips for video encoders, synthesized on the GPU.

Data flows one way: dataset index -> planner -> decode -> synthesis kernel -> iterator -> trainer.
Importing this package needs neither a GPU nor CuPy nor DALI; GPU parts are imported where used.
"""

import numpy as np

from .data.index import DatasetIndex, VideoInfo
from .plan.augment import SpatialConfig, SpatialMode
from .plan.config import ALL_TYPES, BoundaryType, SynthesisConfig
from .plan.planner import Planner, PlanningError, SamplePlan, SourceRef
from .synth.synthesis import Layout, OutDType, RecipeTables, synthesize, synthesize_reference

__version__ = "0.1.0"


def __getattr__(name):
    # The iterator pulls in PyTorch: import it on first use, not with the package.
    if name in ("BSPIterator", "LastBatchPolicy", "DecodeFailures"):
        from . import iterator

        return getattr(iterator, name)
    raise AttributeError(f"module 'bsp_dali' has no attribute {name!r}")


def torch_view(array, dtype="float32"):
    """Zero-copy PyTorch tensor of a synthesized batch (NumPy or CuPy); bfloat16 batches travel as
    uint16 bit patterns and come back as ``torch.bfloat16``."""
    import torch

    t = torch.from_numpy(array) if isinstance(array, np.ndarray) else torch.from_dlpack(array)
    if OutDType.parse(dtype) is OutDType.BFLOAT16:
        t = t.view(torch.bfloat16)
    return t


__all__ = [
    "ALL_TYPES",
    "BSPIterator",
    "DecodeFailures",
    "LastBatchPolicy",
    "SpatialConfig",
    "SpatialMode",
    "BoundaryType",
    "DatasetIndex",
    "Layout",
    "OutDType",
    "Planner",
    "PlanningError",
    "RecipeTables",
    "SamplePlan",
    "SourceRef",
    "SynthesisConfig",
    "VideoInfo",
    "synthesize",
    "synthesize_reference",
    "torch_view",
    "__version__",
]
