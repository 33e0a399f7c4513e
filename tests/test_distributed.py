"""The processes of a run: device choice (one GPU per rank through CUDA_VISIBLE_DEVICES or all of
them), setup_dist, the collectives on two gloo processes, and the launcher's one-line failures.

On the CPU the CUDA calls are stand-ins that record what setup_dist asks of them; only a GPU
confirms that NCCL accepts the bound device (tests/test_kernel_gpu.py and the GPU training run)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bsp_dali import gpu
from bsp_dali.train import distributed
from bsp_dali.train.distributed import Dist, WorkerFailed, cuda_index, launch, setup_dist
from conftest import free_port


@pytest.mark.parametrize("local_rank, visible, want", [
    (0, 8, 0), (3, 8, 3), (7, 8, 7),  # every rank sees the node's GPUs: its own
    (0, 1, 0), (3, 1, 0), (7, 1, 0),  # one GPU per rank (SLURM, CUDA_VISIBLE_DEVICES=3): its device 0
])
def test_cuda_index_of_each_rank(local_rank, visible, want):
    assert cuda_index(local_rank, visible, "3") == want


@pytest.mark.parametrize("local_rank, visible, message", [
    (3, 2, "LOCAL_RANK 3 but 2 CUDA devices are visible (CUDA_VISIBLE_DEVICES='0,1')"),
    (0, 0, "LOCAL_RANK 0: no CUDA device is visible (CUDA_VISIBLE_DEVICES='0,1')"),
])
def test_cuda_index_refuses_what_it_cannot_resolve(local_rank, visible, message):
    with pytest.raises(ValueError) as e:
        cuda_index(local_rank, visible, "0,1")
    assert message in str(e.value)


def clear_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)


def test_setup_dist_without_a_launcher_is_one_cpu_process(monkeypatch):
    clear_env(monkeypatch)
    d = setup_dist(use_gpu=False)
    assert (d.rank, d.world, d.local_rank, d.device) == (0, 1, 0, torch.device("cpu"))
    assert d.is_main and not d.on_gpu


@pytest.mark.parametrize("name, value, message", [
    ("RANK", "one", "environment variable RANK ('one') must be an integer"),
    ("RANK", "2", "RANK (2) and WORLD_SIZE (1) must satisfy"),
])
def test_setup_dist_names_a_bad_environment(monkeypatch, name, value, message):
    clear_env(monkeypatch)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        setup_dist(use_gpu=False)


class FakeCuda:
    """What setup_dist asks of torch.cuda on a node where this process sees ``count`` devices."""

    def __init__(self, count):
        self.count, self.current, self.set_calls = count, 0, []

    def install(self, monkeypatch):
        monkeypatch.setattr(gpu, "cuda_device_count", lambda: self.count)  # the one answer setup_dist asks
        monkeypatch.setattr(torch.cuda, "is_available", lambda: self.count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "set_device", self.set_device)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)

    def set_device(self, index):
        self.set_calls.append(index)
        self.current = index


@pytest.mark.parametrize("local_rank, visible, cuda_visible, want", [
    ("3", 1, "3", 0),  # SLURM --gpus-per-task=1: rank 3 sees its GPU as device 0
    ("3", 8, None, 3),  # bsp-dali train --gpus 8 / torchrun: all eight visible
])
def test_setup_dist_takes_the_device_it_set_from_current_device(monkeypatch, local_rank, visible, cuda_visible,
                                                                 want):
    clear_env(monkeypatch)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    if cuda_visible:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda_visible)
    cuda = FakeCuda(visible)
    cuda.install(monkeypatch)
    d = setup_dist(use_gpu=True)
    assert cuda.set_calls == [want]
    assert d.device == torch.device("cuda", want) and d.on_gpu and d.local_rank == int(local_rank)


def test_setup_dist_binds_the_nccl_group_to_its_device(monkeypatch):
    clear_env(monkeypatch)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_RANK", "5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    FakeCuda(1).install(monkeypatch)
    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **kw: calls.append((a, kw)))
    d = setup_dist(use_gpu=True)
    assert calls == [(("nccl",), {"device_id": torch.device("cuda", 0)})]
    assert (d.rank, d.world, d.device) == (5, 16, torch.device("cuda", 0)) and not d.is_main


def test_a_gpu_run_without_cuda_is_a_clear_error(monkeypatch):
    clear_env(monkeypatch)
    FakeCuda(0).install(monkeypatch)
    with pytest.raises(ValueError, match="no CUDA device is usable"):
        setup_dist(use_gpu=True)


# ---------------------------------------------------------------------------------- two gloo processes
def _two_ranks(local_rank, port, folder):
    """One of two CPU ranks: joins through setup_dist, then exercises each collective and the
    checkpointer's rank-0 resume decision; writes what it saw to folder/rank<R>.pt."""
    from bsp_dali.train.checkpointer import Checkpointer

    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    d = setup_dist(use_gpu=False)
    seen = {"dist": (d.rank, d.world, d.local_rank, str(d.device)), "backend": dist.get_backend()}
    seen["gathered"] = distributed.gather_objects({"rank": d.rank}, d)
    seen["agree_one"] = distributed.agree(d.rank == 1, d)
    seen["agree_none"] = distributed.agree(False, d)
    model = torch.nn.BatchNorm1d(3)
    model.running_mean.fill_(float(d.rank + 1))
    distributed.sync_buffers(model, d)
    seen["buffer"] = model.running_mean.tolist()
    seen["fingerprints"] = distributed.gather_objects(distributed.weight_fingerprint(model), d)
    # rank 0 decides whether to resume: only rank 1's run folder holds a last.pt here, so neither resumes
    out = os.path.join(folder, f"out{d.rank}")
    os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
    if d.rank == 1:
        with open(os.path.join(out, "checkpoints", "last.pt"), "wb") as fh:
            fh.write(b"not read")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpt = Checkpointer(out, d, model=model, optimizer=opt, scheduler=sched, loaders={}, meta={})
    seen["resumed_at"] = ckpt.resume()
    distributed.teardown(d)
    torch.save(seen, os.path.join(folder, f"rank{local_rank}.pt"))
    # Leave without the interpreter's exit: about one run in 15 on this machine (on main too), a
    # C++ thread left joinable after the gloo group is destroyed aborts the process in static
    # destruction ("terminate called without an active exception", no Python frame), after
    # everything checked here is done.
    os._exit(0)


def test_two_gloo_processes_join_and_share(tmp_path):
    mp.start_processes(_two_ranks, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    seen = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r, s in enumerate(seen):
        assert s["dist"] == (r, 2, r, "cpu") and s["backend"] == "gloo"
        assert s["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert s["agree_one"] is True and s["agree_none"] is False
        assert s["buffer"] == [1.0, 1.0, 1.0]  # rank 0's statistics everywhere
        assert s["fingerprints"][0] == s["fingerprints"][1]
        assert s["resumed_at"] == 0


# ---------------------------------------------------------------------------------- the launcher
def _fails_on_rank_1(_):
    if os.environ["RANK"] == "1":
        raise ValueError("rank one cannot go on")
    import time

    time.sleep(60)  # rank 0 waits, as a rank in a collective would, until the launcher stops it


def _returns_rank(_):
    return int(os.environ["RANK"])


def test_launch_returns_every_rank_result():
    assert launch(_returns_rank, None, nproc=2, nnodes=1, node_rank=0, endpoint=f"127.0.0.1:{free_port()}") == \
        {0: 0, 1: 1}


def test_a_failing_process_is_one_error_naming_rank_message_and_traceback():
    with pytest.raises(WorkerFailed) as e:
        launch(_fails_on_rank_1, None, nproc=2, nnodes=1, node_rank=0, endpoint=f"127.0.0.1:{free_port()}")
    assert e.value.rank == 1 and e.value.message == "ValueError: rank one cannot go on"
    assert str(e.value).startswith("process of rank 1 failed: ValueError: rank one cannot go on (its traceback: ")
    with open(e.value.traceback_file) as fh:
        assert "_fails_on_rank_1" in fh.read()


def test_dist_properties():
    d = Dist(rank=2, world=4, local_rank=2, device=torch.device("cuda", 0))
    assert not d.is_main and d.on_gpu
