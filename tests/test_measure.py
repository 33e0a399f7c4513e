"""The measurement units against loaders and loops whose true rate is known.

Every loader here sleeps instead of computing, so its rate does not depend on free CPU: a worker
that sleeps ``SLEEP`` per item delivers ``1 / SLEEP`` items/s, ``w`` such workers ``w / SLEEP``.
The bench's own code times them (:func:`steady_rate` with the bench's warm-up rules); each result
must be within 15 % of the known rate. The timing window is shortened to ``WINDOW`` (the bench
uses 30 batches and 10 s); at 12.5-50 batches/s it still holds 30-75 batches, so the quantization
of a loader that delivers in waves of ``w`` batches stays under 6 %, and 20 ms per item keeps the
loaders' own overhead (IPC, collation, late wake-ups on a busy machine) to a few percent.

The bench's timing before this test existed (3 warm-up batches, then 10 timed) read the batches a
prefetching DataLoader had queued while the consumer was busy as free, and reported
many times the true rate; these tests fail on it.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from bsp_dali.measure import (LoopTimer, MeasurementError, UtilSampler, Window, dataloader_warmup, prefetch_warmup,
                              steady_rate)

# 4 sleeping workers on a 2-core machine are fine: PyTorch's warning about it is not
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

SLEEP = 0.020  # seconds per item
BATCH = 4
WINDOW = Window(min_batches=30, min_seconds=1.5, quick=True)
TOL = 0.15


class Sleepy(torch.utils.data.Dataset):
    """Each item takes SLEEP seconds of a worker's time and no CPU."""

    def __len__(self) -> int:
        return 10**6

    def __getitem__(self, i: int) -> int:
        time.sleep(SLEEP)
        return i


def within(measured: float, known: float) -> bool:
    return abs(measured - known) <= TOL * known


# ---------------------------------------------------------------------------------- DataLoader
# (workers, prefetch_factor, prefilled): "without prefetch" is one batch in flight per worker (or
# no workers at all); "with prefetch" is a deep queue that the workers fill while the consumer is
# busy elsewhere (a slow first step, CUDA start-up, another row finishing) before timing begins.
CASES = [(0, None, False), (1, 1, False), (2, 1, False), (4, 1, False), (1, 16, True), (2, 8, True), (4, 4, True)]


@pytest.mark.parametrize("workers, prefetch, prefilled", CASES)
def test_dataloader_rate_is_measured_within_15_percent(workers, prefetch, prefilled):
    loader = torch.utils.data.DataLoader(Sleepy(), batch_size=BATCH, num_workers=workers, prefetch_factor=prefetch)
    known = max(workers, 1) / SLEEP  # items/s
    it = iter(loader)
    next(it)  # the workers are up
    if prefilled:  # every worker finishes its whole queue of batches before anyone times the loader
        time.sleep(prefetch * BATCH * SLEEP + 0.3)
    try:
        res = steady_rate(it, lambda b: len(b), warmup=dataloader_warmup(workers, prefetch), window=WINDOW)
    finally:
        del it
    got = res.rates["items_per_s"]
    assert within(got, known), f"{workers} workers, prefetch {prefetch}: measured {got:.0f}/s, true {known:.0f}/s"
    assert res.batches >= WINDOW.min_batches and res.seconds >= WINDOW.min_seconds
    assert res.totals["items"] == res.batches * BATCH


# ---------------------------------------------------------------------------------- pipeline shape
class PrefetchLoader:
    """Shaped like BSPIterator's _Prefetcher: a background thread prepares whole batches (here with
    a pool of ``threads`` that sleep per item) into a queue of ``depth``."""

    def __init__(self, threads: int, depth: int):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.pool = ThreadPoolExecutor(threads)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            batch = list(self.pool.map(lambda k: time.sleep(SLEEP) or k, range(i, i + BATCH)))
            i += BATCH
            while not self.stop.is_set():
                try:
                    self.q.put(batch, timeout=0.05)
                    break
                except queue.Full:
                    continue

    def __iter__(self):
        return self

    def __next__(self):
        return self.q.get()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.pool.shutdown()


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_prefetch_thread_rate_is_measured_within_15_percent(threads):
    depth = 2
    loader = PrefetchLoader(threads, depth)
    try:
        next(loader)
        time.sleep((depth + 1) * BATCH * SLEEP / threads + 0.3)  # queue full, one more batch in hand
        res = steady_rate(loader, lambda b: len(b), warmup=prefetch_warmup(depth), window=WINDOW)
    finally:
        loader.close()
    known = threads / SLEEP
    got = res.rates["items_per_s"]
    assert within(got, known), f"{threads} threads: measured {got:.0f}/s, true {known:.0f}/s"


# ---------------------------------------------------------------------------------- halves, errors
def test_halves_show_a_rate_that_changes_inside_the_window():
    def batches():
        for k in range(1000):
            time.sleep(0.010 if k < 15 else 0.020)  # 100 batches/s, then 50
            yield k

    res = steady_rate(batches(), lambda b: 1, warmup=0, window=Window(min_batches=30, min_seconds=0))
    first, second = res.first_half["items_per_s"], res.second_half["items_per_s"]
    assert res.batches == 30
    assert within(first, 100) and within(second, 50), (first, second)
    assert within(res.rates["items_per_s"], 30 / 0.45)
    assert res.spread == pytest.approx(abs(first - second) / res.rates["items_per_s"])
    assert res.to_json()["halves"]["items_per_s"] == [first, second]


def test_several_quantities_and_a_loader_that_ends_early():
    res = steady_rate(iter(range(100)), lambda b: {"clips": 2, "frames": 16}, warmup=3,
                      window=Window(min_batches=10, min_seconds=0))
    assert res.totals == {"clips": 20, "frames": 160} and res.warmup_batches == 3
    assert res.rates["frames_per_s"] == pytest.approx(8 * res.rates["clips_per_s"])
    with pytest.raises(MeasurementError, match="warm-up"):
        steady_rate(iter(range(2)), lambda b: 1, warmup=3)
    with pytest.raises(MeasurementError, match="ended after 5 timed batches"):
        steady_rate(iter(range(8)), lambda b: 1, warmup=3, window=Window(min_batches=30, min_seconds=0))


def test_warmup_rules():
    assert dataloader_warmup(0, None) == 2
    assert dataloader_warmup(16, 2) == 34  # the H200 run: 16 workers x 2 batches queued
    assert dataloader_warmup(4, None) == 10  # PyTorch's default prefetch_factor is 2
    assert prefetch_warmup(2) == 4
    with pytest.raises(ValueError, match="prefetch_factor"):
        dataloader_warmup(2, 0)
    with pytest.raises(ValueError, match="min_batches"):
        Window(min_batches=1)


# ---------------------------------------------------------------------------------- utilization
def test_util_sampler_with_a_fake_nvml():
    """The real sampler reads NVML (``nvml_sampler``) and has not run on a GPU; this one counts."""
    calls = iter(range(10**6))

    def fake():
        k = next(calls)
        return {"nvdec": 10.0 * (k % 3), "gpu": 50.0}

    with UtilSampler(fake, interval=0.01) as util:
        time.sleep(0.3)
    s = util.summary()
    assert s["samples"] >= 5
    vals = [10.0 * (k % 3) for k in range(s["samples"])]
    assert s["nvdec_mean"] == pytest.approx(sum(vals) / len(vals)) and s["nvdec_max"] == 20.0
    assert s["gpu_mean"] == 50.0 and s["gpu_max"] == 50.0 and "error" not in s
    n = s["samples"]
    time.sleep(0.05)
    assert util.summary()["samples"] == n  # stopped with the block


def test_util_sampler_survives_a_failing_driver():
    def broken():
        raise RuntimeError("NVML_ERROR_GPU_IS_LOST")

    with UtilSampler(broken, interval=0.01) as util:
        time.sleep(0.05)
    s = util.summary()
    assert s["samples"] == 0 and "GPU_IS_LOST" in s["error"]


# ---------------------------------------------------------------------------------- training loop
def run_loop(timer: LoopTimer, batches, steps: int, step) -> dict:
    it = iter(batches)
    for _ in range(steps):
        b = timer.next_batch(it)
        step(b)
        timer.step_done(BATCH)
    return timer.report()


def test_data_wait_of_a_slow_loader_is_its_true_fraction():
    d, k = 0.030, 0.020  # the loader takes 30 ms per batch (in next()), the step 20 ms
    spent = {"loader": 0.0, "step": 0.0}  # the truth, clocked inside: sleeps overrun on a busy machine

    def timed_sleep(what, seconds):
        t0 = time.perf_counter()
        time.sleep(seconds)
        spent[what] += time.perf_counter() - t0

    def slow():
        while True:
            timed_sleep("loader", d)
            yield 0

    rep = run_loop(LoopTimer(), slow(), 25, lambda b: timed_sleep("step", k))
    loader, step = spent["loader"], spent["step"]
    assert within(rep.data_wait, loader / (loader + step)), (rep, spent)
    assert within(rep.clips_per_s, 25 * BATCH / (loader + step)), (rep, spent)
    assert within(rep.step_s, step / 25) and within(rep.wait_s, loader / 25)


def test_data_wait_of_a_prefetching_loader_counts_only_the_blocked_time():
    d, k = BATCH * SLEEP, 0.020  # a batch every 80 ms from a thread; the step takes 20 ms: 60 ms blocked

    loader = PrefetchLoader(threads=1, depth=2)
    try:
        rep = run_loop(LoopTimer(), loader, 25, lambda b: time.sleep(k))
    finally:
        loader.close()
    assert within(rep.data_wait, (d - k) / d), rep
    assert within(rep.clips_per_s, BATCH / d), rep


def test_data_wait_of_a_fast_loader_is_near_zero():
    rep = run_loop(LoopTimer(), [0] * 30, 30, lambda b: time.sleep(0.010))
    assert rep.data_wait < 0.02 and rep.steps == 30 and rep.clips == 30 * BATCH
    assert within(rep.clips_per_s, BATCH / 0.010)


class FakeDevice:
    """An asynchronous device: launches queue work on a stream (a thread) and return at once;
    ``sync`` waits for the stream; events are stamped when the stream reaches them, like CUDA's."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            fn = self.q.get()
            fn()
            self.q.task_done()

    def launch(self, seconds: float) -> None:
        self.q.put(lambda: time.sleep(seconds))

    def sync(self) -> None:
        self.q.join()

    def event(self):
        dev = self

        class Event:
            t = None

            def record(self):
                dev.q.put(self._stamp)

            def _stamp(self):
                self.t = time.perf_counter()

            def elapsed_time(self, other):  # ms, like torch.cuda.Event
                return (other.t - self.t) * 1e3

        return Event()


def test_an_asynchronous_device_is_timed_without_a_sync_per_step():
    """The host launches a step in 10 ms, the device runs it in 25 ms: the loop's true rate is one
    step per 25 ms. Synchronizing every step (as `bsp-dali train` did) serializes the two and
    reports one per 35 ms."""
    dev = FakeDevice()

    def step(b):
        time.sleep(0.010)
        dev.launch(0.025)

    rep = run_loop(LoopTimer(sync=dev.sync, event=dev.event), [0] * 40, 40, step)
    assert within(rep.clips_per_s, BATCH / 0.025), rep
    assert rep.data_wait < 0.1, rep


def test_data_wait_on_an_asynchronous_device_is_the_device_idle_time():
    """A batch every 80 ms; a step queues 40 ms of device work, then spends 10 ms more on the host
    (the rest of its Python): the device idles 40 of every 80 ms (data-wait 0.5; with data at once
    the loop would take 40 ms a step), while the host blocks 70 of them."""
    dev = FakeDevice()
    loader = PrefetchLoader(threads=1, depth=2)

    def step(b):
        dev.launch(0.040)
        time.sleep(0.010)

    try:
        rep = run_loop(LoopTimer(sync=dev.sync, event=dev.event), loader, 25, step)
    finally:
        loader.close()
    assert within(rep.data_wait, 0.5), rep
    assert within(rep.host_wait, 0.875), rep
    assert within(rep.clips_per_s, BATCH / (BATCH * SLEEP)), rep


def test_nvml_finds_the_cuda_device_by_pci_bus_id(monkeypatch):
    """Under CUDA_VISIBLE_DEVICES=3 the rank's CUDA device 0 is NVML's device 3: found by bus id,
    with the index only as the fallback where no bus id is known."""
    import bsp_dali.measure as m

    class FakeNVML:
        def nvmlDeviceGetHandleByPciBusId(self, bus):
            if bus != "00000000:3B:00.0":
                raise RuntimeError("NVML_ERROR_NOT_FOUND")
            return "handle-of-nvml-device-3"

        def nvmlDeviceGetHandleByIndex(self, i):
            return f"handle-of-nvml-device-{i}"

    monkeypatch.setattr(m, "cuda_pci_bus_ids", lambda i: ["00000000:3B:00.0", "0000:3B:00.0"])
    assert m.nvml_handle(FakeNVML(), 0) == "handle-of-nvml-device-3"
    monkeypatch.setattr(m, "cuda_pci_bus_ids", lambda i: ["0000:3B:00.0"])
    assert m.nvml_handle(FakeNVML(), 0) == "handle-of-nvml-device-0"  # not found by bus: the index
    monkeypatch.setattr(m, "cuda_pci_bus_ids", lambda i: [])
    assert m.nvml_handle(FakeNVML(), 2) == "handle-of-nvml-device-2"


def test_cuda_pci_bus_ids_without_a_gpu_is_empty():
    import torch

    from bsp_dali.measure import cuda_pci_bus_ids

    if torch.cuda.is_available():
        ids = cuda_pci_bus_ids(0)
        assert len(ids) == 2 and ids[0].count(":") == 2 and ids[0].endswith(".0")
    else:
        assert cuda_pci_bus_ids(0) == []
