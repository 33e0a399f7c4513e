"""Where a training checkpoint is written and read: ``OUT/checkpoints/last.pt`` (every
``checkpoint_every`` steps and at each epoch end) and ``OUT/checkpoints/epoch-NNN.pt``.

A checkpoint (format version 2) holds the model, optimizer and scheduler states, the step, the
run's configuration and class names, and for every rank its iterators' positions and its random
states, all as values a weights-only load reads (``bsp_models.load_bsp_checkpoint``). Version 1
files (NumPy's random state pickled as an array) still resume.

Writing is atomic: the checkpoint is serialized in memory, written to a temporary file beside the
target, flushed to disk and renamed over it, so a kill at any moment leaves the previous checkpoint
intact. A full disk raises :class:`CheckpointWriteError` naming the file and the space it needs,
after removing the temporary file.
"""

from __future__ import annotations

import io
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..data.index import is_disk_full
from .distributed import Dist, gather_objects

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 2  # 2: RNG states as plain values, which a weights-only load reads
READABLE_CHECKPOINT_VERSIONS = (1, 2)  # 1: NumPy's RNG state as an array (read through an allow-list)


def checkpoint_dir(out: str | Path) -> Path:
    """The checkpoints of the run folder ``out``."""
    return Path(out) / "checkpoints"


def last_checkpoint(out: str | Path) -> Path:
    """The checkpoint a run in ``out`` resumes from."""
    return checkpoint_dir(out) / "last.pt"


# Settings a resumed run may change: where things are, how long it runs, how it reports, how many
# processes (another world size restarts the interrupted epoch), initial weights (replaced by the
# checkpoint's), and epochs (the schedule is then recomputed for the new total). Every other
# setting (task, arch, size, synthesis, optimizer and schedule settings, batch, seed, split...)
# shapes the weights or the data: a checkpoint written with other values is refused.
RESUMABLE_CHANGES = frozenset({
    "data", "out", "epochs", "max_steps", "max_minutes", "log_every", "checkpoint_every", "val_every", "val_clips",
    "resume", "gpus", "nproc", "nnodes", "node_rank", "rdzv_endpoint", "compile", "channels_last", "threads",
    "pretrained", "tsm_checkpoint", "teacher_vanilla", "teacher_bsp", "trust_checkpoint", "deterministic"})


class ResumeMismatch(ValueError):
    """The checkpoint a run would resume from was written with other settings."""


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"synthesis": {"tau": 4}}`` as ``{"synthesis.tau": 4}`` (tuples as lists)."""
    flat: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return flat


def resume_differences(saved: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(setting, checkpoint's value, new value) of every setting outside :data:`RESUMABLE_CHANGES`
    that differs between a checkpoint's stored config and the new run's (both ``TrainConfig.to_dict``
    plus ``"model"``). A setting the checkpoint does not record (an older file) is not compared."""
    old_flat, new_flat = _flat(saved), _flat(new)
    derived = {f"model.{k}" for k in new_flat} | {"model.num_frames"}  # model.arch repeats arch; T = 2*tau
    return [(k, old_flat[k], v) for k, v in new_flat.items()
            if k.split(".")[0] not in RESUMABLE_CHANGES and k not in derived and k in old_flat and old_flat[k] != v]


def check_resumable(path: str | Path, saved: Mapping[str, Any] | None, new: Mapping[str, Any]) -> None:
    """Raise :class:`ResumeMismatch` naming the checkpoint, what differs (old vs new) and the way
    out, when ``saved`` (the checkpoint's config) differs from ``new`` in a setting that cannot change
    on resume; log the epochs change, which can."""
    if not isinstance(saved, Mapping):
        return
    diffs = resume_differences(saved, new)
    if diffs:
        what = ", ".join(f"{k} {old!r} (now {cur!r})" for k, old, cur in diffs[:6])
        more = f" and {len(diffs) - 6} more" if len(diffs) > 6 else ""
        raise ResumeMismatch(f"{path} was written by a run with other settings: {what}{more}. Resume with the "
                             f"same settings, use another --out, or --no-resume (starts over, replacing that "
                             f"run's checkpoints)")
    if "epochs" in saved and saved["epochs"] != new.get("epochs"):
        log.info("resuming %s with --epochs %s (it was %s): the learning-rate schedule follows the new total",
                 path, new.get("epochs"), saved["epochs"])


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; its temporary file is removed, the previous checkpoint
    is kept."""

    def __str__(self) -> str:
        return str(self.strerror)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def atomic_save(obj: Any, path: Path) -> int:
    """Write ``obj`` (``torch.save``) to ``path`` atomically; returns its size in bytes. Serializing
    in memory first makes a full disk an ``OSError`` of our own write (torch's writer reports it as
    a ``RuntimeError`` of its zip container) and tells the size needed."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            free = shutil.disk_usage(path.parent).free
            raise CheckpointWriteError(e.errno, (
                f"no space left to write checkpoint {path}: it needs {_mib(len(data))}, its disk has "
                f"{_mib(free)} free. The previous checkpoint is kept; free some space (or use another --out) "
                "and run the same command to resume")) from None
        raise CheckpointWriteError(e.errno, f"cannot write checkpoint {path}: {e.strerror or e}") from None
    except BaseException:  # Ctrl-C during the write: no half file either
        tmp.unlink(missing_ok=True)
        raise
    return len(data)


# ---------------------------------------------------------------------------------- random states
def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain values (tuples of ints, lists, a float, uint8 tensors),
    which a weights-only load reads; :func:`restore_rng` restores them exactly."""
    import torch

    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    numpy_state = {"kind": str(kind), "key": key.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                   "gauss": float(gauss)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):  # version 2; version 1 holds get_state()'s tuple itself
        numpy_state = (numpy_state["kind"], np.asarray(numpy_state["key"], dtype=np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["gauss"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------------------------- the checkpointer
class Checkpointer:
    """Saves and resumes one run's state: ``model``, ``optimizer``, ``scheduler`` and the
    ``loaders`` (iterators by stream name, each with ``state_dict``/``load_state_dict``,
    ``set_epoch``, ``epoch`` and ``position``). ``meta`` (the configuration, the class names) is
    stored with every checkpoint. Both methods are collectives: every rank calls them."""

    def __init__(self, out: str | Path, d: Dist, *, model: Any, optimizer: Any, scheduler: Any,
                 loaders: Mapping[str, Any], meta: Mapping[str, Any], trust: bool = False):
        self.folder = checkpoint_dir(out)
        self.last = last_checkpoint(out)
        self.dist = d
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.loaders = dict(loaders)
        self.meta = dict(meta)
        self.trust = trust
        self.saved_step: int | None = None  # the step of the last checkpoint written or resumed from
        if d.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)

    def resume(self) -> int:
        """Continue from ``last.pt`` when rank 0 finds it (all ranks then start at the same step,
        and each must be able to read it): weights, optimizer, scheduler, this rank's iterator
        positions and random states. Resuming with another number of processes restarts the
        interrupted epoch, since the shards differ. Returns the step (0 when there is nothing to
        resume)."""
        from bsp_models import load_bsp_checkpoint

        if not gather_objects(self.last.is_file(), self.dist)[0]:
            return 0
        state = load_bsp_checkpoint(self.last, trust=self.trust)  # weights-only
        version = state.get("version")
        if version not in READABLE_CHECKPOINT_VERSIONS:
            raise ValueError(f"{self.last} has checkpoint version {version}, expected one of "
                             f"{list(READABLE_CHECKPOINT_VERSIONS)}")
        check_resumable(self.last, state.get("config"), self.meta.get("config", {}))
        if version != CHECKPOINT_VERSION and self.dist.is_main:
            log.info("%s is a version %d checkpoint: read through an allow-list of NumPy's array pieces; "
                     "the next checkpoint is written as version %d", self.last, version, CHECKPOINT_VERSION)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rank, world = self.dist.rank, self.dist.world
        saved = state["loaders"]  # one entry per rank of the saving run
        same_world = len(saved) == world
        mine = saved[rank] if same_world else saved[0]
        for name, loader in self.loaders.items():
            if mine.get(str(name)):
                loader.load_state_dict(mine[str(name)])
                if not same_world:  # another world size: shards differ, so restart that epoch
                    log.warning("resuming with %d processes from a run with %d: epoch %d starts over",
                                world, len(saved), loader.epoch)
                    loader.set_epoch(loader.epoch)
        rngs = state["rng"]
        restore_rng(rngs[rank] if rank < len(rngs) else rngs[0])
        self.saved_step = int(state["step"])
        if self.dist.is_main:
            first = next(iter(self.loaders.values()), None)
            log.info("resumed from %s at step %d (epoch %d, batch %d)", self.last, self.saved_step,
                     first.epoch if first else 0, first.position if first else 0)
        return self.saved_step

    def save(self, step: int, name: str = "last.pt") -> Path:
        """Write the state at ``step`` to ``OUT/checkpoints/<name>`` (rank 0 writes; every rank
        contributes its iterator positions and random states)."""
        rngs = gather_objects(rng_state(), self.dist)
        # keyed by plain names (a ClipMode is a str; its enum type would not pass a weights-only load)
        loaders = gather_objects({str(k): ldr.state_dict() for k, ldr in self.loaders.items()}, self.dist)
        path = self.folder / name
        if self.dist.is_main:
            atomic_save({"version": CHECKPOINT_VERSION, "model": self.model.state_dict(),
                         "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                         "scaler": None, "step": step, **self.meta, "loaders": loaders, "rng": rngs}, path)
        if name == self.last.name:
            self.saved_step = step
        return path
