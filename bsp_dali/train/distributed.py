"""The processes of a training run: starting them, which one this is, its device, and the few
collectives the trainer needs.

* :func:`launch` starts ``nproc`` processes per node through PyTorch's elastic launcher (the library
  behind ``torchrun``) and turns its failures into one-line errors (:class:`WorkerFailed`) and a
  Ctrl-C into ``KeyboardInterrupt``.
* :func:`setup_dist` runs in each process: it reads the launcher's environment (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``: set by :func:`launch`, ``torchrun``, or SLURM through
  ``torchrun``), picks the device (:func:`cuda_index`) and joins the process group.
* :func:`gather_objects`, :func:`agree`, :func:`sync_buffers`: collectives, each a no-op in a single
  process, so one code path serves one process and many.

torch is imported where used: ``import bsp_dali`` stays light.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

from .. import gpu

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run. ``device`` is a ``torch.device``: ``cuda:<i>`` with ``i``
    among the devices this process sees, or ``cpu``."""

    rank: int
    world: int
    local_rank: int
    device: Any

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics and the summary, and decides whether to resume."""
        return self.rank == 0

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} ({value!r}) must be an integer") from None


def cuda_index(local_rank: int, visible: int, cuda_visible_devices: str | None = None) -> int:
    """The CUDA device (an index among the ``visible`` ones) of the process with ``local_rank``.

    * Every rank sees all the node's GPUs (``bsp-dali train --gpus 8``, ``torchrun``): its own
      local rank.
    * Each rank sees one GPU (SLURM's ``--gpus-per-task=1``, or any ``CUDA_VISIBLE_DEVICES`` of one
      device per rank): that device, index 0, whatever the local rank (LOCAL_RANK=3 with
      CUDA_VISIBLE_DEVICES=3 sees one device, its 0).
    """
    if visible < 1:
        raise ValueError(f"LOCAL_RANK {local_rank}: no CUDA device is visible "
                         f"(CUDA_VISIBLE_DEVICES={cuda_visible_devices!r})")
    if local_rank < visible:
        return local_rank
    if visible == 1:
        return 0
    raise ValueError(f"LOCAL_RANK {local_rank} but {visible} CUDA devices are visible "
                     f"(CUDA_VISIBLE_DEVICES={cuda_visible_devices!r}): give each process all the node's GPUs "
                     "or exactly one")


def setup_dist(use_gpu: bool) -> Dist:
    """Join the run: rank and world from the environment (1 process without a launcher), the device
    (set as the current CUDA device, then read back from ``torch.cuda.current_device()``), and the
    process group (NCCL, bound to that device, on GPU; gloo on CPU) when there are several ranks."""
    import torch
    import torch.distributed as dist

    world, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not (world >= 1 and 0 <= rank < world):
        raise ValueError(f"RANK ({rank}) and WORLD_SIZE ({world}) must satisfy 0 <= RANK < WORLD_SIZE")
    if use_gpu:
        visible = gpu.cuda_device_count()  # the iterator's answer too
        if visible == 0:
            raise ValueError(f"a GPU run was asked for but no CUDA device is usable: {gpu.no_gpu_reason()} "
                             "(use --gpus 0 for the CPU)")
        torch.cuda.set_device(cuda_index(local_rank, visible, os.environ.get("CUDA_VISIBLE_DEVICES")))
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if use_gpu:  # binding the group to the device lets NCCL set up its communicator eagerly
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def teardown(d: Dist) -> None:
    """Wait for every rank, then leave the process group."""
    import torch.distributed as dist

    if d.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------- collectives
def gather_objects(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if d.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def agree(flag: bool, d: Dist) -> bool:
    """True on every rank when any rank says True (so that all ranks stop at the same step)."""
    if d.world == 1:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sync_buffers(model: Any, d: Dist) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP broadcasts them at
    each forward, so after the last step the ranks differ by their own last update."""
    if d.world == 1:
        return
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b, 0)


def weight_fingerprint(model: Any) -> str:
    """A hash of every parameter's and buffer's bytes: equal on every rank when DDP kept them equal."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------- launching
class WorkerFailed(RuntimeError):
    """A launched process failed: the first failure's message, the rank, and where its traceback is."""

    def __init__(self, rank: int, message: str, traceback_file: str | None):
        self.rank, self.message, self.traceback_file = rank, message, traceback_file
        where = f" (its traceback: {traceback_file})" if traceback_file else ""
        super().__init__(f"process of rank {rank} failed: {message}{where}")


def launch(fn: Callable[[Any], Any], arg: Any, *, nproc: int, nnodes: int, node_rank: int,
           endpoint: str) -> dict[int, Any]:
    """Run ``fn(arg)`` in ``nproc`` new processes on this node (of ``nnodes``), which rendezvous at
    ``endpoint`` (host:port of node 0); returns their results by local rank. A process that fails
    raises :class:`WorkerFailed` here (the others are stopped); a signal to this process (Ctrl-C,
    SIGTERM) stops them all and raises ``KeyboardInterrupt``."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc, run_id="bsp-dali",
                          rdzv_backend="static", rdzv_endpoint=endpoint, rdzv_configs={"rank": node_rank},
                          max_restarts=0, start_method="spawn")
    # the launcher's warnings narrate the shutdown that the errors below sum up in one line (each of
    # its modules sets its logger's level, so each is quietened)
    quiet = [logger for name, logger in logging.root.manager.loggerDict.items()
             if name.startswith("torch.distributed.elastic") and isinstance(logger, logging.Logger)]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        results = elastic_launch(config, fn)(arg)
    except SignalException as e:
        raise KeyboardInterrupt(f"signal {e.sigval}") from None
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise _worker_failed(rank, failure) from None
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    return results if isinstance(results, dict) else {}


def _worker_failed(rank: int, failure: Any) -> WorkerFailed:
    """The first line of a failed process's error, from the error file its ``@record`` wrapper
    wrote (``{"message": "Type: text", "extraInfo": {"py_callstack": ...}}``), or the signal that
    ended it."""
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    lines = str(message).strip().splitlines() or ["no message"]
    has_file = bool(failure.error_file) and os.path.isfile(failure.error_file)
    return WorkerFailed(rank, lines[0], failure.error_file if has_file else None)
