"""Loading weights from local files; nothing is downloaded.

* torchvision ImageNet ResNet weights (``conv1.weight``, ``layer1.0.conv1.weight``, ``fc.*``) into a
  TSM encoder (whose block ``conv1`` is wrapped as ``conv1.net``);
* the official TSM checkpoint layout (``module.base_model.*``, ``module.new_fc.*``, possibly inside
  a ``state_dict`` entry) into a :class:`~bsp_models.heads.ClipClassifier` or an encoder;
* bsp-dali's own training checkpoints (``{"model": ..., "config": ...}``).

Every file is read as data, never as code: ``torch.load(weights_only=True)`` (tensors, numbers,
strings, lists, tuples, dicts), or safetensors for a ``.safetensors`` file. A file that such a load
refuses raises :class:`UnsafeCheckpointError`, naming what it holds; only ``trust=True`` (the
CLI's ``--trust-checkpoint``) then loads it with full pickle, with a logged warning.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .encoder import TSMEncoder

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    pass


class UnsafeCheckpointError(CheckpointError):
    """A file that a weights-only load refuses: unpickling it could run code it names."""

    def __init__(self, path: str | Path, contents: str):
        self.path = Path(path)
        self.contents = contents
        super().__init__(f"{path} was not loaded: it holds {contents}, which a weights-only load does not allow "
                         "(unpickling it could run code). If you trust this file and where it came from, load it "
                         "with --trust-checkpoint (trust=True in Python), which unpickles it in full.")


_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
_REFUSAL_REASON = re.compile(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\s*\n|Check the documentation|$)", re.S)


def _refused_contents(path: Path, message: str) -> str:
    """What a refused file holds, in words: the globals it names (every one, found by scanning the
    pickle without running it, where PyTorch can), else PyTorch's reason."""
    names: list[str] = []
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - the legacy (non-zip) format: the error names the first one
        pass
    names = names or _REFUSED_GLOBAL.findall(message)
    if names:
        return ("the Python global " if len(names) == 1 else "the Python globals ") + ", ".join(names)
    m = _REFUSAL_REASON.search(message)
    return f"pickle content that only full unpickling reads ({' '.join(m.group(1).split()) if m else 'unknown'})"


def _read_safetensors(path: Path) -> dict[str, Any]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{path}: reading .safetensors files needs the safetensors package "
                              "(pip install safetensors)") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def read_checkpoint(path: str | Path, *, trust: bool = False, allow: Sequence[Any] = ()) -> dict[str, Any]:
    """The dict a checkpoint file holds, read as data: a ``.safetensors`` file through safetensors,
    anything else through ``torch.load(weights_only=True)`` with the extra globals ``allow`` (an
    explicit allow-list, as :func:`torch.serialization.safe_globals` takes it). A file that load
    refuses raises :class:`UnsafeCheckpointError`, unless ``trust``: then it is unpickled in full
    after a logged warning."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    refused = None
    with torch.serialization.safe_globals(list(allow)):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # the weights-only unpickler refused something
            if not _is_pickle_or_zip(path):
                raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (neither a zip archive nor a "
                                      "pickle)") from None
            refused = _refused_contents(path, str(e))
            if not trust:
                raise UnsafeCheckpointError(path, refused) from None
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(e)})") from None
    if refused is not None:
        log.warning("trusted checkpoint %s holds %s: unpickling it in full, which runs any code it names",
                    path, refused)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _is_pickle_or_zip(path: Path) -> bool:
    """What torch.save writes: a zip archive, or (the legacy format) a pickle."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def numpy_rng_globals() -> list[Any]:
    """The NumPy pieces that a version-1 bsp-dali checkpoint pickled for NumPy's RNG state (a uint32
    array): the array constructor under the names NumPy 1 and 2 give it, the array and dtype types.
    Nothing else; version 2 checkpoints store that state as plain ints and need none of them."""
    import numpy as np

    core = getattr(np, "_core", None)
    multiarray = core.multiarray if core is not None else np.core.multiarray
    rec = multiarray._reconstruct
    return [(rec, "numpy.core.multiarray._reconstruct"), (rec, "numpy._core.multiarray._reconstruct"),
            np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _load_into(module: nn.Module, state: dict[str, Any], path: str | Path) -> tuple[list[str], list[str]]:
    try:
        return module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path} does not fit the model: {str(e).splitlines()[-1].strip()}") from None


_BLOCK_CONV1 = re.compile(r"^(layer\d+\.\d+)\.conv1\.(weight|bias)$")


def load_imagenet_resnet(encoder: TSMEncoder, path: str | Path, *, trust: bool = False) -> list[str]:
    """torchvision ResNet weights (``.pth`` or ``.safetensors``) into ``encoder.base_model``; returns
    the keys left out (fc). ``trust``: see :func:`read_checkpoint`."""
    state = read_checkpoint(path, trust=trust)
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


def load_tsm_checkpoint(model: nn.Module, path: str | Path, load_fc: bool = True, *, trust: bool = False) -> None:
    """An official TSM checkpoint (``module.base_model.*``, ``module.new_fc.*``; ``.pth`` or
    ``.safetensors``) into a model with ``encoder.base_model`` (and ``new_fc``), or into an encoder.
    ``trust``: see :func:`read_checkpoint`."""
    state = read_checkpoint(path, trust=trust)
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


def load_bsp_checkpoint(path: str | Path, *, trust: bool = False) -> dict[str, Any]:
    """A bsp-dali training checkpoint as saved by ``bsp-dali train``, read weights-only (version 1
    files through the allow-list :func:`numpy_rng_globals`). ``trust``: see :func:`read_checkpoint`."""
    if Path(path).suffix == ".safetensors":
        raise CheckpointError(f"{path}: a bsp-dali training checkpoint is the .pt file `bsp-dali train` writes "
                              "(a .safetensors file holds weights only, without the training config)")
    state = read_checkpoint(path, trust=trust, allow=numpy_rng_globals())
    if "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a bsp-dali training checkpoint (no 'model'/'config')")
    model_cfg = state["config"].get("model") if isinstance(state["config"], dict) else None
    if not isinstance(state["model"], dict) or not isinstance(model_cfg, dict) \
            or not {"arch", "num_frames"} <= set(model_cfg):
        raise CheckpointError(f"{path} is not a bsp-dali training checkpoint (its config names no model "
                              "'arch' and 'num_frames')")
    return state


def encoder_from_bsp_checkpoint(source: str | Path | dict[str, Any], *, trust: bool = False) -> TSMEncoder:
    """The encoder of a bsp-dali checkpoint (a path, or a state already loaded with
    :func:`load_bsp_checkpoint`), weights loaded, in eval mode. ``trust``: see :func:`read_checkpoint`."""
    from .encoder import EncoderConfig

    state = source if isinstance(source, dict) else load_bsp_checkpoint(source, trust=trust)
    cfg = state["config"]["model"]
    enc = TSMEncoder(EncoderConfig(cfg["arch"], cfg["num_frames"], cfg.get("fold_div", 8)))
    prefix = "encoder."
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    if not weights:
        prefix = "student."
        weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    name = "the checkpoint" if isinstance(source, dict) else str(source)
    if not weights:
        raise CheckpointError(f"{name} holds no encoder weights ('encoder.*' or 'student.*')")
    try:
        enc.load_state_dict(weights)
    except RuntimeError as e:  # missing, unexpected or misshapen weights
        raise CheckpointError(f"{name} does not fit {cfg['arch']}: {str(e).splitlines()[0].strip()}") from None
    return enc.eval()
