"""Loading weights from local files; nothing is downloaded.

* torchvision ImageNet ResNet weights (``conv1.weight``, ``layer1.0.conv1.weight``, ``fc.*``) into a
  TSM encoder (whose block ``conv1`` is wrapped as ``conv1.net``);
* the official TSM checkpoint layout (``module.base_model.*``, ``module.new_fc.*``, possibly inside
  a ``state_dict`` entry) into a :class:`~bsp_models.heads.ClipClassifier` or an encoder;
* bsp-dali's own training checkpoints (``{"model": ..., "config": ...}``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .encoder import TSMEncoder


class CheckpointError(ValueError):
    pass


def _load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _load_into(module: nn.Module, state: dict[str, Any], path: str | Path) -> tuple[list[str], list[str]]:
    try:
        return module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path} does not fit the model: {str(e).splitlines()[-1].strip()}") from None


_BLOCK_CONV1 = re.compile(r"^(layer\d+\.\d+)\.conv1\.(weight|bias)$")


def load_imagenet_resnet(encoder: TSMEncoder, path: str | Path) -> list[str]:
    """torchvision ResNet weights into ``encoder.base_model``; returns the keys left out (fc)."""
    state = _load(path)
    state = state.get("state_dict", state)
    mapped, skipped = {}, []
    for k, v in state.items():
        if k.startswith("fc."):
            skipped.append(k)
            continue
        mapped[_BLOCK_CONV1.sub(r"\1.conv1.net.\2", k)] = v
    missing, unexpected = _load_into(encoder.base_model, mapped, path)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit {encoder.config.arch}: missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}")
    return skipped


def load_tsm_checkpoint(model: nn.Module, path: str | Path, load_fc: bool = True) -> None:
    """An official TSM checkpoint (``module.base_model.*``, ``module.new_fc.*``) into a model with
    ``encoder.base_model`` (and ``new_fc``), or into an encoder."""
    state = _load(path)
    state = state.get("state_dict", state)
    clean = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if not any(k.startswith("base_model.") for k in clean):
        raise CheckpointError(f"{path} is not in the TSM layout (no 'base_model.' keys)")
    encoder = model if isinstance(model, TSMEncoder) else getattr(model, "encoder", None)
    if not isinstance(encoder, TSMEncoder):
        raise CheckpointError("the model has no TSM encoder to load into")
    base = {k[len("base_model."):]: v for k, v in clean.items() if k.startswith("base_model.") and not k.startswith("base_model.fc.")}
    missing, unexpected = _load_into(encoder.base_model, base, path)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit {encoder.config.arch}: missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}")
    fc = {k[len("new_fc."):]: v for k, v in clean.items() if k.startswith("new_fc.")}
    if load_fc and fc and hasattr(model, "new_fc"):
        if fc["weight"].shape != model.new_fc.weight.shape:
            raise CheckpointError(f"{path}: new_fc has {fc['weight'].shape[0]} classes, the model "
                                  f"{model.new_fc.weight.shape[0]}; load without the classifier")
        model.new_fc.load_state_dict(fc)


def load_bsp_checkpoint(path: str | Path) -> dict[str, Any]:
    """A bsp-dali training checkpoint as saved by ``bsp-dali train``."""
    state = _load(path)
    if "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a bsp-dali training checkpoint (no 'model'/'config')")
    return state


def encoder_from_bsp_checkpoint(source: str | Path | dict[str, Any]) -> TSMEncoder:
    """The encoder of a bsp-dali checkpoint (a path, or a state already loaded with
    :func:`load_bsp_checkpoint`), weights loaded, in eval mode."""
    from .encoder import EncoderConfig

    state = source if isinstance(source, dict) else load_bsp_checkpoint(source)
    cfg = state["config"]["model"]
    enc = TSMEncoder(EncoderConfig(cfg["arch"], cfg["num_frames"], cfg.get("fold_div", 8)))
    prefix = "encoder."
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    if not weights:
        prefix = "student."
        weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    enc.load_state_dict(weights)
    return enc.eval()
