"""Pre-training a TSM encoder on synthesized boundaries: ``bsp-dali train``.

One GPU:               bsp-dali train data/kinetics400 --gpus 1
Eight GPUs, one node:  bsp-dali train data/kinetics400 --gpus 8
Two nodes of eight:    bsp-dali train data/kinetics400 --gpus 8 --nnodes 2 --node-rank {0,1} \
                           --rdzv-endpoint node0:29500
Under torchrun/SLURM:  torchrun --nproc-per-node 8 -m bsp_dali train data/kinetics400
Laptop CPU, 2 procs:   bsp-dali train data/kinetics400 --gpus 0 --nproc 2

One process per GPU (DDP), started through PyTorch's elastic launcher; each rank reads its own
shard of every epoch. The loop below reads top to bottom: build data, model, optimizer; resume;
then for each epoch, for each batch: forward, loss, backward, clip, step; checkpoint every
``checkpoint_every`` steps and at each epoch end (atomically); validate at each epoch end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .augment import SpatialConfig, SpatialMode
from .gpu import autocast as autocast_for
from .config import SynthesisConfig
from .index import DatasetIndex
from .measure import LoopTimer

log = logging.getLogger(__name__)

TASKS = ("bsp", "action", "regression", "two-head", "distill")
CHECKPOINT_VERSION = 2  # 2: RNG states as plain values, which a weights-only load reads
READABLE_CHECKPOINT_VERSIONS = (1, 2)  # 1: NumPy's RNG state as an array (read through an allow-list)


@dataclass
class TrainConfig:
    """Training settings. Defaults follow TSM's Kinetics recipe (Lin et al. 2019) and the BSP paper:
    SGD with momentum 0.9, lr 0.01 per 64 clips (scaled linearly with the global batch), weight
    decay 1e-4 on weights only (no decay on BatchNorm and biases), a linear warm-up of one epoch then
    cosine decay, gradient-norm clipping at 20, dropout 0.5 before the classifier, 224x224 crops."""

    data: str = ""
    out: str = "runs/bsp"
    task: str = "bsp"
    arch: str = "resnet50"
    epochs: int = 30
    batch_size: int = 8  # clips per process
    lr: float = 0.01  # for a global batch of 64; scaled by global_batch / 64
    optimizer: str = "sgd"  # or "adamw" (the demo: from scratch, minutes, no ImageNet weights)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # or "step"
    lr_steps: tuple[int, ...] = (20, 25)  # epochs at which "step" divides the lr by 10
    clip_grad: float = 20.0
    dropout: float = 0.5
    size: int = 224
    crop_scale: tuple[float, float] = (0.25, 1.0)  # random resized crop: area fraction range
    epoch_size: int | None = None  # clips per epoch over all ranks (default: number of videos)
    val_fraction: float = 0.05
    val_clips: int = 512
    val_every: int = 1  # epochs between validations (and always after the last step)
    checkpoint_every: int = 500
    log_every: int = 10
    max_steps: int | None = None
    max_minutes: float | None = None
    resume: bool = True
    seed: int = 0
    gpus: int | None = None  # processes on GPUs (None: all visible); 0: CPU
    nproc: int = 1  # CPU processes when gpus == 0
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = "127.0.0.1:29500"
    compile: bool = False
    channels_last: bool = True  # on GPU
    threads: int | None = None  # decode threads per process
    pretrained: str | None = None  # torchvision ImageNet ResNet weights (local file)
    tsm_checkpoint: str | None = None  # official TSM checkpoint (local file)
    teacher_vanilla: str | None = None  # distill: bsp-dali checkpoints of the frozen teachers
    teacher_bsp: str | None = None
    trust_checkpoint: bool = False  # unpickle in full the checkpoints a weights-only load refuses
    deterministic: bool = False
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)

    def __post_init__(self) -> None:
        if isinstance(self.synthesis, dict):
            self.synthesis = SynthesisConfig.from_dict(self.synthesis)
        self.lr_steps = tuple(int(v) for v in self.lr_steps)
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer ({self.optimizer!r}) must be sgd or adamw")
        if self.task not in TASKS:
            raise ValueError(f"task ({self.task!r}) must be one of {list(TASKS)}")
        from bsp_models import ARCHS

        if self.arch not in ARCHS:
            raise ValueError(f"arch ({self.arch!r}) must be one of {sorted(ARCHS)}")
        for name in ("epochs", "batch_size", "size", "checkpoint_every", "log_every", "nproc", "nnodes", "val_clips",
                     "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 1")
        if self.lr <= 0 or self.momentum < 0 or self.weight_decay < 0 or self.clip_grad <= 0:
            raise ValueError("lr and clip_grad must be > 0, momentum and weight_decay >= 0")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule ({self.schedule!r}) must be cosine or step")
        if not (0 < self.val_fraction < 0.9):
            raise ValueError(f"val_fraction ({self.val_fraction}) must be in (0, 0.9)")
        if self.gpus is not None and self.gpus < 0:
            raise ValueError(f"gpus ({self.gpus}) must be >= 0")
        if not (0 <= self.node_rank < self.nnodes):
            raise ValueError(f"node_rank ({self.node_rank}) must be in 0..nnodes-1 ({self.nnodes - 1})")
        if self.task == "distill" and not (self.teacher_vanilla and self.teacher_bsp):
            raise ValueError("task distill needs --teacher-vanilla and --teacher-bsp (bsp-dali checkpoints)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["synthesis"] = self.synthesis.to_dict()
        d["lr_steps"] = list(self.lr_steps)
        d["crop_scale"] = list(self.crop_scale)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}")
        return cls(**data)


# ---------------------------------------------------------------------------------- launching
def processes_per_node(cfg: TrainConfig) -> tuple[int, bool]:
    """(processes on this node, on GPU?)."""
    import torch

    gpus = cfg.gpus if cfg.gpus is not None else (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if gpus > 0:
        if not torch.cuda.is_available() or torch.cuda.device_count() < gpus:
            have = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise ValueError(f"--gpus {gpus} asked for, {have} CUDA device(s) visible")
        return gpus, True
    return cfg.nproc, False


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run training: in this process, or in ``nproc`` processes through the elastic launcher.
    Returns rank 0's summary."""
    under_launcher = "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ
    nproc, _ = processes_per_node(cfg)
    if under_launcher or (nproc == 1 and cfg.nnodes == 1):
        return run_worker(cfg.to_dict())
    if not cfg.trust_checkpoint:
        check_checkpoints(cfg)  # a refused file: one error here, not a failure in every worker
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    host, _, port = cfg.rdzv_endpoint.rpartition(":")
    launch = LaunchConfig(min_nodes=cfg.nnodes, max_nodes=cfg.nnodes, nproc_per_node=nproc, run_id="bsp-dali",
                          rdzv_backend="static", rdzv_endpoint=cfg.rdzv_endpoint,
                          rdzv_configs={"rank": cfg.node_rank}, max_restarts=0, start_method="spawn")
    log.info("launching %d process(es) per node on %d node(s), rendezvous %s:%s", nproc, cfg.nnodes, host, port)
    results = elastic_launch(launch, run_worker)(cfg.to_dict())
    return results.get(0, {}) if isinstance(results, dict) else {}


def check_checkpoints(cfg: TrainConfig) -> None:
    """Read every checkpoint the run will read (weights-only), raising CheckpointError for the
    first one that is missing, unreadable or refused."""
    from bsp_models import load_bsp_checkpoint, read_checkpoint

    for path in (cfg.pretrained, cfg.tsm_checkpoint):
        if path:
            read_checkpoint(path)
    last = Path(cfg.out) / "checkpoints" / "last.pt"
    for path in (cfg.teacher_vanilla, cfg.teacher_bsp, last if cfg.resume and last.is_file() else None):
        if path:
            load_bsp_checkpoint(path)


# ---------------------------------------------------------------------------------- the worker
def split_train_val(index: DatasetIndex, fraction: float, seed: int = 0) -> tuple[DatasetIndex, DatasetIndex]:
    """Hold out about ``fraction`` of each class's videos (at least one when a class has three or
    more), chosen by a hash of the path so that the split never changes when files are added."""
    import zlib

    train, val = [], []
    for c in range(index.num_classes):
        members = index.videos_of_class(c).tolist()
        keyed = sorted(members, key=lambda v: zlib.crc32(f"{seed}:{index.videos[v].path}".encode()))
        k = int(round(len(members) * fraction))
        if k == 0 and len(members) >= 3:
            k = 1
        val += keyed[:k]
        train += keyed[k:]
    return index.subset(sorted(train)), index.subset(sorted(val))


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only; none on BatchNorm parameters and biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up, then cosine or step decay."""
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return min(1.0, (step + 1) / warm)
    if cfg.schedule == "cosine":
        progress = (step - warm) / max(1.0, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    epoch = step / max(1, steps_per_epoch)
    return 0.1 ** sum(epoch >= e for e in cfg.lr_steps)


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file, flush it to disk, then rename: a kill never leaves a half file."""
    import torch

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class _Metrics:
    """JSONL (always) and TensorBoard (when installed) on rank 0."""

    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except Exception:  # noqa: BLE001 - TensorBoard is optional
                log.info("TensorBoard is not installed: metrics go to %s only", self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(k, v, record.get("step", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def build_model(cfg: TrainConfig, num_actions: int) -> Any:
    from bsp_models import (ClipClassifier, Distill, FrameRegressor, TwoHead, create_encoder,
                            encoder_from_bsp_checkpoint, load_imagenet_resnet, load_tsm_checkpoint)

    T = cfg.synthesis.T
    enc = create_encoder(cfg.arch, T)
    if cfg.pretrained:
        load_imagenet_resnet(enc, cfg.pretrained, trust=cfg.trust_checkpoint)
    if cfg.task == "bsp":
        model = ClipClassifier(enc, cfg.synthesis.num_classes, cfg.dropout)
    elif cfg.task == "action":
        model = ClipClassifier(enc, num_actions, cfg.dropout)
    elif cfg.task == "regression":
        model = FrameRegressor(enc)
    elif cfg.task == "two-head":
        model = TwoHead(enc, num_actions, cfg.synthesis.num_classes, cfg.dropout)
    else:
        model = Distill(enc, encoder_from_bsp_checkpoint(cfg.teacher_vanilla, trust=cfg.trust_checkpoint),
                        encoder_from_bsp_checkpoint(cfg.teacher_bsp, trust=cfg.trust_checkpoint), num_actions)
    if cfg.tsm_checkpoint:
        load_tsm_checkpoint(model if hasattr(model, "encoder") else enc, cfg.tsm_checkpoint,
                            load_fc=cfg.task == "action", trust=cfg.trust_checkpoint)
    return model


def run_worker(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """One training process (rank). Called directly, by the elastic launcher, or under torchrun."""
    import torch
    import torch.distributed as dist
    from bsp_models import classification_loss, distill_loss, load_bsp_checkpoint, regression_loss, two_head_loss

    from .ingest import load_data
    from .iterator import BSPIterator

    cfg = TrainConfig.from_dict(cfg_dict)
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if not logging.getLogger().handlers:  # a spawned worker: rank 0 reports, the others warn
        logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                            format=f"[rank {rank}] %(message)s" if world > 1 else "%(message)s")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    _, on_gpu = processes_per_node(cfg)
    device = torch.device(f"cuda:{local_rank}" if on_gpu else "cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if on_gpu else "gloo")
    is_main = rank == 0
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed + rank)

    # ---- data: a train/val split of the videos; one iterator per stream this task reads
    index = load_data(cfg.data)
    train_index, val_index = split_train_val(index, cfg.val_fraction, cfg.seed)
    spatial = SpatialConfig(size=(cfg.size, cfg.size), mode=SpatialMode.TRAIN, scale=cfg.crop_scale)
    common = dict(batch_size=cfg.batch_size, synthesis=cfg.synthesis, spatial=spatial, seed=cfg.seed,
                  device="gpu" if on_gpu else "cpu", num_threads=cfg.threads, device_id=local_rank,
                  epoch_size=cfg.epoch_size)
    uses_bsp = cfg.task in ("bsp", "regression", "two-head")
    uses_action = cfg.task in ("action", "two-head", "distill")
    bsp_loader = BSPIterator(train_index, mode="bsp", **common) if uses_bsp else None
    action_loader = BSPIterator(train_index, mode="action", **common) if uses_action else None
    loader = bsp_loader or action_loader
    assert loader is not None
    steps_per_epoch = len(loader)

    # ---- model and optimizer
    model = build_model(cfg, index.num_classes).to(device)
    if on_gpu and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if on_gpu else None)
    forward = torch.compile(ddp_model) if cfg.compile else ddp_model
    global_batch = cfg.batch_size * world
    base_lr = cfg.lr * global_batch / 64
    groups = _param_groups(model, cfg.weight_decay)
    opt = (torch.optim.SGD(groups, lr=base_lr, momentum=cfg.momentum) if cfg.optimizer == "sgd"
           else torch.optim.AdamW(groups, lr=base_lr))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, steps_per_epoch))
    autocast = autocast_for("gpu" if on_gpu else "cpu")

    # ---- resume
    step, epoch, mid_epoch = 0, 0, False
    last = ckpt_dir / "last.pt"
    # rank 0 decides, so that all ranks start at the same step (every rank must then read the file)
    if cfg.resume and gather_objects(last.is_file(), world)[0]:
        state = load_bsp_checkpoint(last, trust=cfg.trust_checkpoint)  # weights-only
        if state.get("version") not in READABLE_CHECKPOINT_VERSIONS:
            raise ValueError(f"{last} has checkpoint version {state.get('version')}, expected one of "
                             f"{list(READABLE_CHECKPOINT_VERSIONS)}")
        if state["version"] != CHECKPOINT_VERSION and is_main:
            log.info("%s is a version %d checkpoint: read through an allow-list of NumPy's array pieces; "
                     "the next checkpoint is written as version %d", last, state["version"], CHECKPOINT_VERSION)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
        saved = state["loaders"]  # one entry per rank of the saving run
        mine = saved[rank] if len(saved) == world else saved[0]
        for name, ldr in (("bsp", bsp_loader), ("action", action_loader)):
            if ldr is not None and mine.get(name):
                ldr.load_state_dict(mine[name])
                if len(saved) != world:  # another world size: shards differ, so restart that epoch
                    log.warning("resuming with %d processes from a run with %d: epoch %d starts over",
                                world, len(saved), ldr.epoch)
                    ldr.set_epoch(ldr.epoch)
        epoch = loader.epoch
        mid_epoch = 0 < loader.position < len(loader)
        if loader.position >= len(loader):
            epoch, mid_epoch = epoch + 1, False
        restore_rng(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        if is_main:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", last, step, epoch, loader.position)

    def save(path: Path) -> None:
        rngs = gather_objects(rng_state(), world)
        loaders = gather_objects({"bsp": bsp_loader.state_dict() if bsp_loader else None,
                                  "action": action_loader.state_dict() if action_loader else None}, world)
        if not is_main:
            return
        atomic_save({"version": CHECKPOINT_VERSION, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "scaler": None, "step": step, "config": {
                         **cfg.to_dict(), "model": {"arch": cfg.arch, "num_frames": cfg.synthesis.T, "fold_div": 8,
                                                    "num_actions": index.num_classes, "task": cfg.task}},
                     "classes": list(index.classes), "loaders": loaders, "rng": rngs}, path)

    def compute_loss(batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        with autocast():
            if cfg.task == "two-head":
                action_batch = _next_cycle(action_loader)
                out_b = forward(batch["video"])
                out_a = forward(action_batch["video"])
                return two_head_loss(out_b, batch, out_a, action_batch), out_b
            o = forward(batch["video"])
            if cfg.task == "regression":
                return regression_loss(o, batch), o
            if cfg.task == "distill":
                return distill_loss(o, batch), o
            return classification_loss(o, batch), o

    metrics = _Metrics(out, is_main)
    t_start = time.time()
    summary: dict[str, Any] = {}
    stop = False
    last_loss = None
    try:
        for epoch in range(epoch, cfg.epochs):
            if not mid_epoch:
                loader.set_epoch(epoch)
            mid_epoch = False
            ddp_model.train()
            # data-wait and step time over each logging interval; the GPU is synchronized once per
            # interval (in report()), never per step; on the GPU the data-wait is read from CUDA
            # events: the device's idle time between one step's work and the next batch
            timer = LoopTimer(sync=torch.cuda.synchronize if on_gpu else None,
                              event=(lambda: torch.cuda.Event(enable_timing=True)) if on_gpu else None)
            it = iter(loader)
            while True:
                try:
                    batch = timer.next_batch(it)
                except StopIteration:
                    break
                loss, _ = compute_loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                opt.step()
                sched.step()
                step += 1
                last_loss = loss.detach()
                timer.step_done(batch["video"].shape[0] * world)
                if step % cfg.log_every == 0:
                    t = timer.report()  # on every rank, so that each rank's interval ends here
                    if is_main:
                        rec = {"step": step, "epoch": epoch, "batch": loader.position, "loss": float(last_loss),
                               "lr": sched.get_last_lr()[0], **t.to_json()}
                        metrics.write(rec)
                        log.info("epoch %d batch %d/%d step %d loss %.4f lr %.5f %.1f clips/s data-wait %.0f%% "
                                 "step %.3f s", epoch, loader.position, len(loader), step, rec["loss"], rec["lr"],
                                 rec["clips_per_s"], 100 * rec["data_wait"], rec["step_s"])
                if step % cfg.checkpoint_every == 0:
                    save(last)
                # the time limit is agreed by all ranks (clocks differ); the config is the same everywhere
                over_time = cfg.max_minutes is not None and _agree((time.time() - t_start) / 60 >= cfg.max_minutes, world)
                if (cfg.max_steps is not None and step >= cfg.max_steps) or over_time:
                    stop = True
                    break
            save(last)
            if loader.position >= len(loader):  # a whole epoch: keep its checkpoint too
                save(ckpt_dir / f"epoch-{epoch:03d}.pt")
            sync_buffers(model, world)  # BatchNorm statistics: rank 0's, as DDP uses them next forward
            last_epoch = stop or epoch == cfg.epochs - 1
            val = validate(model, val_index, cfg, common, autocast, world) \
                if last_epoch or (epoch + 1) % cfg.val_every == 0 else {}
            if is_main and val:
                metrics.write({"step": step, "epoch": epoch, **{k: v for k, v in val.items() if k != "confusion"},
                               "confusion": val.get("confusion")})
                log.info("epoch %d validation: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in val.items()
                                                                         if isinstance(v, float)))
            summary = {"step": step, "epoch": epoch, "loss": None if last_loss is None else float(last_loss),
                       "minutes": (time.time() - t_start) / 60, "validation": val,
                       "checkpoint": str(last), "failures": loader.failures}
            if stop:
                break
    finally:
        metrics.close()
        for ldr in (bsp_loader, action_loader):
            if ldr is not None:
                ldr.close()
    # a fingerprint of the weights on every rank: DDP keeps them identical, and the summary shows it
    summary["weight_fingerprints"] = gather_objects(weight_fingerprint(model), world)
    if is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return summary


def validate(model: Any, val_index: DatasetIndex, cfg: TrainConfig, common: dict[str, Any],
             autocast: Callable[[], Any], world: int) -> dict[str, Any]:
    """Accuracy (and the confusion matrix) of the task's classifier on held-out synthesized clips:
    the held-out videos, the eval centre crop, a fixed sample set (epoch 0, seed + 1)."""
    import torch

    from .iterator import BSPIterator
    from .planner import PlanningError

    if len(val_index) == 0 or cfg.task == "distill":
        return {}
    mode = "action" if cfg.task == "action" else "bsp"
    kw = dict(common, seed=cfg.seed + 1, spatial=SpatialConfig(size=(cfg.size, cfg.size), mode=SpatialMode.EVAL),
              epoch_size=max(cfg.val_clips, world), last_batch_policy="partial")
    try:
        loader = BSPIterator(val_index, mode=mode, **kw)
    except (PlanningError, ValueError) as e:
        log.warning("no validation: the held-out videos cannot supply the clips (%s)", e)
        return {}
    n_cls = cfg.synthesis.num_classes if mode == "bsp" else val_index.num_classes
    device = next(model.parameters()).device
    conf = torch.zeros(n_cls, n_cls, dtype=torch.int64, device=device)
    sq_err = torch.zeros((), device=device)
    n_reg = torch.zeros((), dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                with autocast():
                    out = model(batch["video"])
                if cfg.task == "regression":
                    sq_err += torch.nn.functional.smooth_l1_loss(out["heatmap"].float(), batch["heatmap"], reduction="sum")
                    n_reg += batch["heatmap"].numel()
                    continue
                logits = out.get("logits", out.get("boundary_logits"))
                pred = logits.argmax(1)
                conf += torch.bincount(batch["label"] * n_cls + pred, minlength=n_cls * n_cls).view(n_cls, n_cls)
    finally:
        loader.close()
        model.train(was_training)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(conf)
        dist.all_reduce(sq_err)
        dist.all_reduce(n_reg)
    if cfg.task == "regression":
        return {"val_smooth_l1": float(sq_err) / max(1, int(n_reg))}
    total = int(conf.sum())
    acc = float(conf.diag().sum()) / max(1, total)
    return {"val_accuracy": acc, "val_clips": total, "confusion": conf.cpu().tolist()}


# ---------------------------------------------------------------------------------- helpers
def _next_cycle(loader: Any) -> dict[str, Any]:
    """The next batch of an auxiliary stream, starting its next epoch when one ends."""
    try:
        return next(loader)
    except StopIteration:
        return next(iter(loader))


def _agree(flag: bool, world: int) -> bool:
    """True on every rank when any rank says True (so that all ranks stop at the same step)."""
    if world == 1:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sync_buffers(model: Any, world: int) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP broadcasts them at
    each forward, so after the last step the ranks differ by their own last update."""
    if world == 1:
        return
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b, 0)


def weight_fingerprint(model: Any) -> str:
    """A hash of every parameter's bytes."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


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


def gather_objects(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out
