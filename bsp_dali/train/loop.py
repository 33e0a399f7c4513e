"""Pre-training a TSM encoder on synthesized boundaries: ``bsp-dali train``.

One GPU:               bsp-dali train data/kinetics400 --gpus 1
Eight GPUs, one node:  bsp-dali train data/kinetics400 --gpus 8
Two nodes of eight:    bsp-dali train data/kinetics400 --gpus 8 --nnodes 2 --node-rank {0,1} \
                           --rdzv-endpoint node0:29500
Under torchrun/SLURM:  torchrun --nproc-per-node 8 -m bsp_dali train data/kinetics400
Laptop CPU, 2 procs:   bsp-dali train data/kinetics400 --gpus 0 --nproc 2

One process per GPU (DDP), started through PyTorch's elastic launcher (``distributed.py``); each
rank reads its own shard of every epoch. What a task trains and its loss are in ``tasks.py``; where
checkpoints are written and how a run resumes, in ``checkpointer.py``. :func:`run_worker` reads
top to bottom: join the run, build data, model, optimizer; resume; then for each epoch, for each
batch: forward, loss, backward, clip, step; checkpoint every ``checkpoint_every`` steps and at each
epoch end; validate at each epoch end. Ctrl-C stops it with :class:`TrainingInterrupted`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .. import gpu
from ..data.index import DatasetIndex, split_train_val
from ..gpu import autocast as autocast_for
from ..measure import LoopTimer
from ..plan.augment import SpatialConfig, SpatialMode
from .checkpointer import Checkpointer, check_resumable, last_checkpoint, seed_everything
from .config import TrainConfig
from .distributed import Dist, agree, gather_objects, launch, setup_dist, sync_buffers, teardown, weight_fingerprint
from .tasks import TASKS, Task

log = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run at ``step`` (None when the launcher could not learn it); the same
    command resumes from ``checkpoint``, written at ``checkpoint_step`` (None: no checkpoint yet)."""

    def __init__(self, step: int | None, checkpoint: Path | None, checkpoint_step: int | None, rank: int = 0):
        self.step, self.checkpoint, self.checkpoint_step, self.rank = step, checkpoint, checkpoint_step, rank
        super().__init__(self.message)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.step, self.checkpoint, self.checkpoint_step, self.rank)

    @property
    def message(self) -> str:
        at = "interrupted" + (f" at step {self.step}" if self.step is not None else "")
        if self.checkpoint is None:
            return f"{at}, before the first checkpoint: the same command starts the run over"
        written = f" (step {self.checkpoint_step})" if self.checkpoint_step is not None else ""
        return f"{at}; the last checkpoint is {self.checkpoint}{written}: run the same command to resume from it"


class NonFiniteLoss(ValueError):
    """The loss became NaN or infinite: the run stops before writing a checkpoint of those weights."""

    def __init__(self, step: int, loss: float, grad_norm: float, checkpoint: Path | None, rank: int = 0):
        self.step, self.loss, self.grad_norm, self.checkpoint, self.rank = step, loss, grad_norm, checkpoint, rank
        kept = (f"the last checkpoint ({checkpoint}) holds earlier weights" if checkpoint is not None
                else "no checkpoint was written")
        what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {grad_norm} (loss {loss})"
        super().__init__(f"{what} at step {step}: training diverged, so it stopped and {kept}. "
                         f"Lower --lr (or check the data and --config), then run again (--no-resume to start over)")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.step, self.loss, self.grad_norm, self.checkpoint, self.rank)


class _LossWatch:
    """Notes each step's loss and gradient norm without a device sync; :meth:`check` (at each
    logging step and before each checkpoint: one sync) raises :class:`NonFiniteLoss` on every rank,
    naming the first step whose loss or gradient norm on any rank was not finite (a non-finite
    gradient norm makes the weights NaN even where the loss was finite)."""

    def __init__(self, d: Dist):
        self.d = d
        self.pending: list[tuple[int, Any, Any]] = []

    def note(self, step: int, loss: Any, grad_norm: Any) -> None:
        self.pending.append((step, loss, grad_norm))

    def check(self, checkpoint: Path | None) -> None:
        import torch

        first = None
        if self.pending:
            values = torch.stack([torch.stack([loss.float(), norm.float()]) for _, loss, norm in self.pending]).cpu()
            bad = (~torch.isfinite(values)).any(dim=1).nonzero()
            if len(bad):
                k = int(bad[0, 0])
                first = (self.pending[k][0], float(values[k, 0]), float(values[k, 1]))
        self.pending.clear()
        found = [f for f in gather_objects(first, self.d) if f is not None]
        if found:
            step, loss, norm = min(found, key=lambda f: f[0])
            raise NonFiniteLoss(step, loss, norm, checkpoint, self.d.rank)


# ---------------------------------------------------------------------------------- launching
def processes_per_node(cfg: TrainConfig) -> tuple[int, bool]:
    """(processes on this node, on GPU?): ``--gpus``, or every usable GPU (the same answer the
    iterator's ``device="auto"`` gets, ``bsp_dali.gpu.cuda_device_count``)."""
    have = gpu.cuda_device_count()
    gpus = cfg.gpus if cfg.gpus is not None else have
    if gpus > 0:
        if have < gpus:
            why = "" if have else f" ({gpu.no_gpu_reason()})"
            raise ValueError(f"--gpus {gpus} asked for, {have} usable CUDA device(s){why}")
        return gpus, True
    return cfg.nproc, False


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run training: in this process, or in ``nproc`` processes through the elastic launcher.
    Returns rank 0's summary. A worker's failure raises :class:`~bsp_dali.train.distributed.WorkerFailed`;
    Ctrl-C raises :class:`TrainingInterrupted`."""
    under_launcher = "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ
    nproc, _ = processes_per_node(cfg)
    started = time.time()
    try:
        if under_launcher or (nproc == 1 and cfg.nnodes == 1):
            return run_worker(cfg.to_dict())
        if not cfg.trust_checkpoint:
            check_checkpoints(cfg)  # a refused file: one error here, not a failure in every worker
        log.info("launching %d process(es) per node on %d node(s), rendezvous %s", nproc, cfg.nnodes,
                 cfg.rdzv_endpoint)
        results = launch(run_worker, cfg.to_dict(), nproc=nproc, nnodes=cfg.nnodes, node_rank=cfg.node_rank,
                         endpoint=cfg.rdzv_endpoint)
        return results.get(0, {})
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:  # before the loop, or in the launcher (which stopped the workers)
        raise _interrupted_run(Path(cfg.out), since=started) from None


def check_checkpoints(cfg: TrainConfig) -> None:
    """Read every checkpoint the run will read (weights-only), raising CheckpointError for the
    first one that is missing, unreadable or refused."""
    from bsp_models import load_bsp_checkpoint, read_checkpoint

    for path in (cfg.pretrained, cfg.tsm_checkpoint):
        if path:
            read_checkpoint(path)
    last = last_checkpoint(cfg.out)
    for path in (cfg.teacher_vanilla, cfg.teacher_bsp):
        if path:
            load_bsp_checkpoint(path)
    if cfg.resume and last.is_file():  # and whether it was written with these settings
        check_resumable(last, load_bsp_checkpoint(last).get("config"), cfg.to_dict())


def _interrupted_run(out: Path, since: float) -> TrainingInterrupted:
    """An interrupted run as its folder tells it: rank 0's summary when it wrote one (since
    ``since``), else the last checkpoint on disk and its step."""
    rank = int(os.environ.get("RANK", 0))
    summary_path = out / "summary.json"
    if summary_path.is_file() and summary_path.stat().st_mtime >= since:
        s = json.loads(summary_path.read_text())
        if s.get("interrupted"):
            return TrainingInterrupted(s.get("step"), s.get("checkpoint") and Path(s["checkpoint"]),
                                       s.get("checkpoint_step"), rank)
    last = last_checkpoint(out)
    if not last.is_file():
        return TrainingInterrupted(None, None, None, rank)
    try:  # mmap: the step without reading the weights
        import torch

        step = int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:  # noqa: BLE001 - a version 1 file needs an allow-list; the path is what matters
        step = None
    return TrainingInterrupted(None, last, step, rank)


# ---------------------------------------------------------------------------------- the worker
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
            self.tb = None


def build_model(cfg: TrainConfig, task: Task, num_actions: int) -> Any:
    """The task's model around a TSM encoder, with the weights ``--pretrained`` and
    ``--tsm-checkpoint`` name."""
    from bsp_models import create_encoder, load_imagenet_resnet, load_tsm_checkpoint

    enc = create_encoder(cfg.arch, cfg.synthesis.T)
    if cfg.pretrained:
        load_imagenet_resnet(enc, cfg.pretrained, trust=cfg.trust_checkpoint)
    model = task.build(cfg, enc, num_actions)
    if cfg.tsm_checkpoint:
        load_tsm_checkpoint(model if hasattr(model, "encoder") else enc, cfg.tsm_checkpoint, load_fc=task.tsm_fc,
                            trust=cfg.trust_checkpoint)
    return model


def run_worker(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """One training process (rank). Called directly, by the elastic launcher, or under torchrun."""
    import torch

    from ..data.ingest import load_data
    from ..iterator import BSPIterator

    cfg = TrainConfig.from_dict(cfg_dict)
    task = TASKS[cfg.task]
    d = setup_dist(use_gpu=cfg.gpus != 0 and (cfg.gpus is not None or gpu.cuda_available()))
    _configure_logging(d)
    world, is_main, on_gpu = d.world, d.is_main, d.on_gpu
    out = Path(cfg.out)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed + d.rank)

    # ---- data: a train/val split of the videos; one iterator per stream the task reads
    index = load_data(cfg.data)
    train_index, val_index = split_train_val(index, cfg.val_fraction, cfg.seed)
    spatial = SpatialConfig(size=(cfg.size, cfg.size), mode=SpatialMode.TRAIN, scale=cfg.crop_scale)
    common = dict(batch_size=cfg.batch_size, synthesis=cfg.synthesis, spatial=spatial, seed=cfg.seed,
                  device="gpu" if on_gpu else "cpu", num_threads=cfg.threads,
                  device_id=d.device.index if on_gpu else 0, epoch_size=cfg.epoch_size)
    loaders = {stream: BSPIterator(train_index, mode=stream, **common) for stream in task.streams}
    loader = loaders[task.streams[0]]  # its epochs are the run's; the other streams cycle alongside
    steps_per_epoch = len(loader)

    # ---- model and optimizer
    model = build_model(cfg, task, index.num_classes).to(d.device)
    if on_gpu and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if on_gpu else None)
    forward = torch.compile(ddp_model) if cfg.compile else ddp_model
    global_batch = cfg.batch_size * world
    base_lr = cfg.lr * global_batch / 64
    groups = _param_groups(model, cfg.weight_decay)
    opt = (torch.optim.SGD(groups, lr=base_lr, momentum=cfg.momentum) if cfg.optimizer == "sgd"
           else torch.optim.AdamW(groups, lr=base_lr))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, steps_per_epoch))
    autocast = autocast_for("gpu" if on_gpu else "cpu")

    # ---- resume: where the checkpoint left the main stream is where this run goes on
    model_cfg = {"arch": cfg.arch, "num_frames": cfg.synthesis.T, "fold_div": 8, "num_actions": index.num_classes,
                 "task": cfg.task}
    ckpt = Checkpointer(out, d, model=model, optimizer=opt, scheduler=sched, loaders=loaders,
                        meta={"config": {**cfg.to_dict(), "model": model_cfg}, "classes": list(index.classes)},
                        trust=cfg.trust_checkpoint)
    step = ckpt.resume() if cfg.resume else 0
    if is_main:  # only now: a start that fails (a refused resume, bad data) leaves the run's config as it was
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    epoch, mid_epoch = loader.epoch, 0 < loader.position < len(loader)
    if loader.position >= len(loader):  # saved at an epoch's end
        epoch += 1

    metrics = _Metrics(out, is_main)
    ctrl_c = _CtrlC()
    t_start = time.time()
    summary: dict[str, Any] = {}
    stop = False
    last_loss = None
    watch = _LossWatch(d)

    def saved() -> Path | None:
        return ckpt.last if ckpt.saved_step is not None else None
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
                # stop before a step, so a run resumed at or past --max-steps takes none; the time
                # limit is agreed by all ranks (clocks differ); the config is the same everywhere
                over_time = cfg.max_minutes is not None and agree((time.time() - t_start) / 60 >= cfg.max_minutes, d)
                if (cfg.max_steps is not None and step >= cfg.max_steps) or over_time:
                    stop = True
                    break
                try:
                    batch = timer.next_batch(it)
                except StopIteration:
                    break
                batches = {task.streams[0]: batch, **{s: _next_cycle(loaders[s]) for s in task.streams[1:]}}
                with autocast():
                    loss = task.loss(forward, batches)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                opt.step()
                sched.step()
                step += 1
                last_loss = loss.detach()
                watch.note(step, last_loss, grad_norm.detach())
                timer.step_done(batch["video"].shape[0] * world)
                if step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0:
                    watch.check(saved())  # never a checkpoint (or a record) of diverged weights
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
                    ckpt.save(step)
            watch.check(saved())
            ckpt.save(step)
            if loader.position >= len(loader):  # a whole epoch: keep its checkpoint too
                ckpt.save(step, f"epoch-{epoch:03d}.pt")
            sync_buffers(model, d)  # BatchNorm statistics: rank 0's, as DDP uses them next forward
            last_epoch = stop or epoch == cfg.epochs - 1
            val = validate(model, task, val_index, cfg, common, autocast, d) \
                if last_epoch or (epoch + 1) % cfg.val_every == 0 else {}
            if is_main and val:
                metrics.write({"step": step, "epoch": epoch, **{k: v for k, v in val.items() if k != "confusion"},
                               "confusion": val.get("confusion")})
                log.info("epoch %d validation: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in val.items()
                                                                         if isinstance(v, float)))
            summary = {"step": step, "epoch": epoch, "loss": None if last_loss is None else float(last_loss),
                       "minutes": (time.time() - t_start) / 60, "validation": val,
                       "checkpoint": str(ckpt.last), "failures": loader.failures}
            if stop:
                break
    except BaseException as e:
        if not (isinstance(e, KeyboardInterrupt) or ctrl_c.seen):
            raise
        # Ctrl-C reaches every process of the job at once: no checkpoint now (the other ranks may
        # be gone); the last one stands, and the same command resumes from it
        ctrl_c.ignore_more()  # the launcher passes the same Ctrl-C on to its workers
        stopped = TrainingInterrupted(step, saved(), ckpt.saved_step,
                                      d.rank)
        if is_main:
            (out / "summary.json").write_text(json.dumps({
                "interrupted": True, "step": step, "checkpoint": stopped.checkpoint and str(stopped.checkpoint),
                "checkpoint_step": ckpt.saved_step, "minutes": (time.time() - t_start) / 60}, indent=1))
        raise stopped from None
    finally:
        ctrl_c.restore()
        _close(metrics, loaders)
    # a fingerprint of the weights on every rank: DDP keeps them identical, and the summary shows it
    summary["weight_fingerprints"] = gather_objects(weight_fingerprint(model), d)
    if is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    teardown(d)
    return summary


def validate(model: Any, task: Task, val_index: DatasetIndex, cfg: TrainConfig, common: dict[str, Any],
             autocast: Callable[[], Any], d: Dist) -> dict[str, Any]:
    """The task's validation metric on held-out clips: the held-out videos, the eval centre crop,
    a fixed sample set (epoch 0, seed + 1)."""
    import torch

    from ..iterator import BSPIterator
    from ..plan.planner import PlanningError

    metric = task.metric(cfg, val_index.num_classes, d.device)
    if len(val_index) == 0 or metric is None:
        return {}
    kw = dict(common, seed=cfg.seed + 1, spatial=SpatialConfig(size=(cfg.size, cfg.size), mode=SpatialMode.EVAL),
              epoch_size=max(cfg.val_clips, d.world), last_batch_policy="partial")
    try:
        loader = BSPIterator(val_index, mode=metric.stream, **kw)
    except (PlanningError, ValueError) as e:
        log.warning("no validation: the held-out videos cannot supply the clips (%s)", e)
        return {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                with autocast():
                    out = model(batch["video"])
                metric.update(out, batch)
    finally:
        loader.close()
        model.train(was_training)
    metric.reduce(d)
    return metric.result()


# ---------------------------------------------------------------------------------- helpers
def _next_cycle(loader: Any) -> dict[str, Any]:
    """The next batch of an auxiliary stream, starting its next epoch when one ends."""
    try:
        return next(loader)
    except StopIteration:
        return next(iter(loader))


def _configure_logging(d: Dist) -> None:
    if not logging.getLogger().handlers:  # a spawned worker: rank 0 reports, the others warn
        logging.basicConfig(level=logging.INFO if d.is_main else logging.WARNING,
                            format=f"[rank {d.rank}] %(message)s" if d.world > 1 else "%(message)s")


def _close(metrics: _Metrics, loaders: dict[str, Any]) -> None:
    metrics.close()
    for ldr in loaders.values():
        ldr.close()


class _CtrlC:
    """Notes a Ctrl-C, then raises KeyboardInterrupt as Python does: the error it causes elsewhere
    (a collective whose peer stopped first) is then known to be the interrupt too."""

    def __init__(self) -> None:
        self.seen = False
        self.previous: Any = signal.getsignal(signal.SIGINT)
        # only the main thread may set handlers; a process told to ignore Ctrl-C goes on ignoring it
        self.installed = threading.current_thread() is threading.main_thread() and self.previous is not signal.SIG_IGN
        if self.installed:
            signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def ignore_more(self) -> None:
        """Ignore further Ctrl-C while the interrupted run cleans up (until :meth:`restore`)."""
        if self.installed:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def restore(self) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.previous if self.previous is not None else signal.SIG_DFL)
            self.installed = False
