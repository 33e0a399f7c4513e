"""bsp-dali: boundary-sensitive pre-training (BSP) clips for video encoders, synthesized on the GPU.

Data flows one way, one subpackage per stage: ``data`` (files -> dataset index) -> ``plan``
(index -> sample plans) -> ``decode`` (plans -> decoded windows) -> ``synth`` (windows -> batch) ->
``iterator`` (batches for PyTorch) -> ``train`` (the training loop); see docs/architecture.md.
Importing this package needs neither a GPU nor PyTorch, CuPy or DALI; they are imported where used.
"""

from .data.index import BadVideo, DatasetIndex, VideoInfo
from .plan.augment import SpatialConfig, SpatialMode
from .plan.config import ALL_TYPES, BoundaryType, SynthesisConfig
from .plan.planner import ClipMode, Planner, PlanningError, SamplePlan, SourceRef
from .synth.tables import Layout, OutDType, RecipeTables
from .synth.synthesis import synthesize, synthesize_reference
from .synth.torch_interop import torch_view

__version__ = "0.1.0"


def __getattr__(name):
    # The iterator pulls in PyTorch, the decode stage its readers: import them on first use, not
    # with the package.
    if name in ("BSPIterator", "LastBatchPolicy", "DecodeFailures"):
        from . import iterator

        return getattr(iterator, name)
    if name == "Decoder":
        from .decode.stage import Decoder

        return Decoder
    raise AttributeError(f"module 'bsp_dali' has no attribute {name!r}")


__all__ = [
    "ALL_TYPES",
    "BadVideo",
    "BSPIterator",
    "ClipMode",
    "DecodeFailures",
    "Decoder",
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
