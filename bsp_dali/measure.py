"""Measurements that cannot flatter: steady-state rates, device utilization, training-loop time.

Three small units, used by ``bsp-dali bench`` (every row), ``bsp-dali train`` (the loop's log)
and the tests that hold them to loaders of known speed:

* :func:`steady_rate` — the delivered rate of any iterator of batches. A loader that prefetches
  (DataLoader workers, a prefetch thread) holds finished batches before anyone times it, and its
  workers deliver in waves; a short timed run after a short warm-up measures the queue, not the
  loader (the bench once printed 3419 clips/s for a DataLoader that delivers 101). So: warm up
  until every queue is drained (:func:`dataloader_warmup`, :func:`prefetch_warmup`), then time a
  window of at least ``min_batches`` batches *and* ``min_seconds`` seconds, and report the rate
  over each half of the window beside the whole: halves that disagree say the window was not
  steady.
* :class:`UtilSampler` — samples a utilization function (NVML's NVDEC and GPU-busy percentages,
  :func:`nvml_sampler`) in a background thread while a row runs; mean and max.
* :class:`LoopTimer` — a training loop's data-wait and step time over a logging interval, with
  the device synchronized once per interval, never per step.

Nothing here imports torch or a GPU library at module level.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class MeasurementError(RuntimeError):
    """A measurement could not be made as specified (the loader ended inside the window, ...)."""


# ---------------------------------------------------------------------------------- steady rate
@dataclass(frozen=True)
class Window:
    """How long a rate is timed: at least ``min_batches`` batches and at least ``min_seconds``
    seconds, whichever ends later. ``quick`` marks a window shortened for a smoke test; every
    result timed with it says so."""

    min_batches: int = 30
    min_seconds: float = 10.0
    quick: bool = False

    def __post_init__(self) -> None:
        if int(self.min_batches) < 2:
            raise ValueError(f"min_batches ({self.min_batches}) must be >= 2 (the window has two halves)")
        if not (self.min_seconds >= 0):
            raise ValueError(f"min_seconds ({self.min_seconds}) must be >= 0")

    def describe(self) -> str:
        what = f">= {self.min_batches} batches and >= {self.min_seconds:g} s after the warm-up"
        return what + (" (quick: a shortened window, not a steady-state figure)" if self.quick else "")


STEADY = Window()
QUICK = Window(min_batches=8, min_seconds=1.0, quick=True)


def dataloader_warmup(num_workers: int, prefetch_factor: int | None) -> int:
    """Warm-up batches that drain a ``torch.utils.data.DataLoader``: each worker holds up to
    ``prefetch_factor`` batches, so ``workers x prefetch_factor`` can be waiting; two more reach
    batches made after the timing could have started."""
    if num_workers < 0:
        raise ValueError(f"num_workers ({num_workers}) must be >= 0")
    if num_workers == 0:
        return 2
    pf = 2 if prefetch_factor is None else int(prefetch_factor)
    if pf < 1:
        raise ValueError(f"prefetch_factor ({prefetch_factor}) must be >= 1")
    return num_workers * pf + 2


def prefetch_warmup(depth: int) -> int:
    """Warm-up batches that drain a prefetch thread with a queue of ``depth`` (plus the batch it
    holds while the queue is full): ``depth + 2``."""
    if depth < 0:
        raise ValueError(f"depth ({depth}) must be >= 0")
    return int(depth) + 2


@dataclass
class SteadyRate:
    """The result of :func:`steady_rate`. ``totals`` are the counted quantities over the window;
    ``rates``, ``first_half`` and ``second_half`` are per second (keys ``<quantity>_per_s``)."""

    warmup_batches: int
    batches: int
    seconds: float
    totals: dict[str, float]
    rates: dict[str, float]
    first_half: dict[str, float]
    second_half: dict[str, float]
    window: Window
    primary: str

    @property
    def spread(self) -> float:
        """|first half - second half| / whole, for the primary quantity."""
        k = f"{self.primary}_per_s"
        whole = self.rates[k]
        return abs(self.first_half[k] - self.second_half[k]) / whole if whole > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        """Flat rates (``clips_per_s`` ...), the halves, the spread and the window."""
        return {**self.rates,
                "halves": {k: [self.first_half[k], self.second_half[k]] for k in self.rates},
                "spread": self.spread,
                "window": {"warmup_batches": self.warmup_batches, "batches": self.batches, "seconds": self.seconds,
                           "min_batches": self.window.min_batches, "min_seconds": self.window.min_seconds,
                           "quick": self.window.quick}}


def _counts(value: Mapping[str, float] | float) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    return {"items": float(value)}


def steady_rate(batches: Iterable[Any], count: Callable[[Any], Mapping[str, float] | float], *, warmup: int,
                window: Window = STEADY, sync: Callable[[], None] | None = None, primary: str | None = None,
                clock: Clock = time.perf_counter) -> SteadyRate:
    """The rate at which ``batches`` delivers, in steady state.

    ``count(batch)`` says what a batch holds: a number (``items``) or a mapping such as
    ``{"clips": 8, "frames": 64}``; every quantity gets a rate. ``warmup`` batches are taken
    untimed first (:func:`dataloader_warmup`, :func:`prefetch_warmup`); then the window runs
    until it holds ``window.min_batches`` batches and ``window.min_seconds`` have passed.
    ``sync`` (e.g. ``torch.cuda.synchronize``) runs after the warm-up and after every batch, so
    that a batch counts when its device work is done. The rate is everything counted over the
    window divided by its wall time; the halves split the window's batches in two."""
    if warmup < 0:
        raise ValueError(f"warmup ({warmup}) must be >= 0")
    it: Iterator[Any] = iter(batches)
    done = 0
    try:
        for done in range(1, warmup + 1):
            next(it)
    except StopIteration:
        raise MeasurementError(f"the loader ended after {done - 1} of {warmup} warm-up batches") from None
    if sync is not None:
        sync()
    stamps: list[float] = []
    counted: list[dict[str, float]] = []
    t0 = clock()
    while len(stamps) < window.min_batches or stamps[-1] - t0 < window.min_seconds:
        try:
            b = next(it)
        except StopIteration:
            raise MeasurementError(f"the loader ended after {len(stamps)} timed batches; the window needs "
                                   f"{window.describe()}") from None
        if sync is not None:
            sync()
        stamps.append(clock())
        counted.append(_counts(count(b)))
    keys = list(counted[0])
    primary = primary or keys[0]
    if primary not in keys:
        raise ValueError(f"primary ({primary!r}) is not a counted quantity {keys}")
    n = len(stamps)
    h = n // 2

    def rates(lo: int, hi: int, start: float, end: float) -> dict[str, float]:
        dt = max(end - start, 1e-12)
        return {f"{k}_per_s": sum(c.get(k, 0.0) for c in counted[lo:hi]) / dt for k in keys}

    totals = {k: sum(c.get(k, 0.0) for c in counted) for k in keys}
    return SteadyRate(warmup_batches=warmup, batches=n, seconds=stamps[-1] - t0, totals=totals,
                      rates=rates(0, n, t0, stamps[-1]), first_half=rates(0, h, t0, stamps[h - 1]),
                      second_half=rates(h, n, stamps[h - 1], stamps[-1]), window=window, primary=primary)


# ---------------------------------------------------------------------------------- utilization
class UtilSampler:
    """Calls ``sample()`` every ``interval`` seconds in a background thread while the ``with``
    block runs; ``summary()`` gives the mean and max of each quantity it returned.

        with UtilSampler(nvml_sampler(0)) as util:
            ...                              # the row
        row["utilization"] = util.summary()  # {"nvdec_mean": ..., "nvdec_max": ..., "samples": n}

    ``sample`` is injected (NVML on a GPU, a fake in tests); a sample that raises is logged once
    and sampling stops, so a broken driver never ends a benchmark."""

    def __init__(self, sample: Callable[[], Mapping[str, float]], interval: float = 0.1):
        if not (interval > 0):
            raise ValueError(f"interval ({interval}) must be > 0")
        self.sample, self.interval = sample, float(interval)
        self.values: dict[str, list[float]] = {}
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            try:
                for k, v in self.sample().items():
                    self.values.setdefault(k, []).append(float(v))
            except Exception as e:  # noqa: BLE001 - the measurement goes on without utilization
                self.error = f"{type(e).__name__}: {e}"
                log.warning("utilization sampling stopped: %s", self.error)
                return
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "UtilSampler":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bsp-util-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"samples": max((len(v) for v in self.values.values()), default=0),
                               "interval_s": self.interval}
        for k, v in self.values.items():
            out[f"{k}_mean"] = sum(v) / len(v) if v else None
            out[f"{k}_max"] = max(v) if v else None
        if self.error:
            out["error"] = self.error
        return out


def cuda_pci_bus_ids(device_index: int) -> list[str]:
    """The PCI bus id of CUDA device ``device_index`` as NVML spells it (8- and 4-digit domain),
    from PyTorch; empty when PyTorch or CUDA is not there. NVML numbers devices ignoring
    ``CUDA_VISIBLE_DEVICES``, so a rank given one GPU that way (SLURM) must find its device by bus."""
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        p = torch.cuda.get_device_properties(int(device_index))
        dom, bus, dev = int(p.pci_domain_id), int(p.pci_bus_id), int(p.pci_device_id)
    except Exception:  # noqa: BLE001 - no torch, no CUDA, an old torch without the fields
        return []
    return [f"{dom:08X}:{bus:02X}:{dev:02X}.0", f"{dom:04X}:{bus:02X}:{dev:02X}.0"]


def nvml_handle(pynvml: Any, device_index: int) -> Any:
    """NVML's handle of CUDA device ``device_index``: by PCI bus id (right under
    ``CUDA_VISIBLE_DEVICES``), else by index (right when all devices are visible)."""
    for bus_id in cuda_pci_bus_ids(device_index):
        try:
            return pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        except Exception:  # noqa: BLE001 - try the other spelling, then the index
            continue
    return pynvml.nvmlDeviceGetHandleByIndex(int(device_index))


def nvml_sampler(device_index: int = 0) -> Callable[[], dict[str, float]] | None:
    """A sampling function for :class:`UtilSampler` through NVML (``nvidia-ml-py``): ``nvdec``
    is ``nvmlDeviceGetDecoderUtilization`` (percent of the last sampling period the decoders were
    busy, over all NVDEC engines) and ``gpu`` is ``nvmlDeviceGetUtilizationRates().gpu`` (percent
    of the period during which a kernel ran). None, with a log line, where NVML is missing or finds
    no device. Not yet run on a GPU."""
    try:
        import pynvml
    except ImportError:
        log.info("nvidia-ml-py is not installed: no NVDEC/GPU utilization (pip install 'bsp-dali[bench]')")
        return None
    try:
        pynvml.nvmlInit()
        handle = nvml_handle(pynvml, device_index)
    except Exception as e:  # noqa: BLE001 - NVMLError and friends
        log.info("NVML is not usable (%s): no NVDEC/GPU utilization", e)
        return None

    def sample() -> dict[str, float]:
        dec, _period_us = pynvml.nvmlDeviceGetDecoderUtilization(handle)
        rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
        return {"nvdec": float(dec), "gpu": float(rates.gpu)}

    return sample


# ---------------------------------------------------------------------------------- training loop
@dataclass
class LoopReport:
    """One logging interval of a training loop. ``data_wait`` is the fraction of the interval spent
    on data: on the CPU the time the loop blocked in ``next()``; with device events, the device's
    idle time between the end of one step's work and the start of the next. ``host_wait`` is the
    host's blocking fraction either way. ``step_s`` is the rest per step."""

    steps: int
    clips: int
    seconds: float
    data_wait: float
    host_wait: float
    step_s: float
    wait_s: float
    clips_per_s: float

    def to_json(self) -> dict[str, float]:
        return {"clips_per_s": self.clips_per_s, "data_wait": self.data_wait, "host_wait": self.host_wait,
                "step_s": self.step_s, "wait_s": self.wait_s, "interval_s": self.seconds, "interval_steps": self.steps}


@dataclass
class LoopTimer:
    """Data-wait and step time of a training loop, one logging interval at a time:

        timer = LoopTimer(sync=torch.cuda.synchronize, event=lambda: torch.cuda.Event(enable_timing=True))
        while True:
            try:
                batch = timer.next_batch(it)      # the time blocked here is data-wait
            except StopIteration:
                break
            ...step...
            timer.step_done(batch_clips)
            if step % log_every == 0:
                rec = timer.report().to_json()    # synchronizes once, then starts the next interval

    The interval is wall time from the previous report (or the timer's start) to this one, after
    ``sync``: clips/s is clips over that. No synchronization happens per step, so the host queues
    work ahead of the device as an untimed loop does. On a device the host's blocking time
    overstates the data-wait (the device may compute a queued step meanwhile) and understates it
    when the loader's own device work runs on the training stream, so with ``event`` (a factory
    of CUDA-event-like objects: ``record()``, ``elapsed_time(other)`` in ms) the data-wait is read
    from the device timeline: from an event recorded after each step's work to one recorded when
    the next batch is in hand."""

    sync: Callable[[], None] | None = None
    event: Callable[[], Any] | None = None
    clock: Clock = time.perf_counter
    _t0: float = field(init=False, default=0.0)
    _wait: float = field(init=False, default=0.0)
    _steps: int = field(init=False, default=0)
    _clips: int = field(init=False, default=0)
    _prev_end: Any = field(init=False, default=None)
    _marks: list = field(init=False, default_factory=list)  # (start event, end event or None) per step

    def __post_init__(self) -> None:
        self._start_interval()

    def _mark(self) -> Any:
        assert self.event is not None
        ev = self.event()
        ev.record()
        return ev

    def _start_interval(self) -> None:
        self._t0 = self.clock()
        self._wait, self._steps, self._clips = 0.0, 0, 0
        self._marks = []
        self._prev_end = self._mark() if self.event is not None else None

    def next_batch(self, it: Iterator[Any]) -> Any:
        """``next(it)``, timed; ``StopIteration`` passes through."""
        t = self.clock()
        try:
            batch = next(it)
        finally:
            self._wait += self.clock() - t
        if self.event is not None:
            self._marks.append([self._mark(), None])
        return batch

    def step_done(self, clips: int) -> None:
        """After the step's work is queued (no synchronization)."""
        self._steps += 1
        self._clips += int(clips)
        if self.event is not None and self._marks:
            self._marks[-1][1] = self._mark()

    def report(self) -> LoopReport:
        """Synchronize, summarize the interval since the last report, start the next one."""
        if self.sync is not None:
            self.sync()
        wall = max(self.clock() - self._t0, 1e-12)
        steps = max(self._steps, 1)
        data = self._wait
        if self.event is not None:
            data, prev = 0.0, self._prev_end
            for start, end in self._marks:
                data += max(0.0, prev.elapsed_time(start) / 1e3)
                prev = end if end is not None else start
        rep = LoopReport(steps=self._steps, clips=self._clips, seconds=wall, data_wait=min(1.0, data / wall),
                         host_wait=self._wait / wall, step_s=max(0.0, wall - data) / steps, wait_s=data / steps,
                         clips_per_s=self._clips / wall)
        self._start_interval()
        return rep


__all__ = ["QUICK", "STEADY", "LoopReport", "LoopTimer", "MeasurementError", "SteadyRate", "UtilSampler", "Window",
           "cuda_pci_bus_ids", "dataloader_warmup", "nvml_handle", "nvml_sampler", "prefetch_warmup", "steady_rate"]
