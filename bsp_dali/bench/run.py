"""Orchestration of ``bsp-dali bench``: settings, the grid of rows, the goals, sanity checks."""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..data.index import ensure_writable_dir
from ..gpu import importable
from ..measure import QUICK, STEADY, MeasurementError, Window, nvml_sampler
from ..plan.config import SynthesisConfig
from .data import QUICK_DATA, BenchDataSpec, bench_data, describe_data, transcoded_data, user_data
from .machine import describe_machine
from .report import write_results
from .rows import (bench_baseline, bench_cpu_ceiling, bench_gpu_ceiling, bench_kernel, bench_pipeline,
                   bench_train_step, stage_profile)

log = logging.getLogger(__name__)

NVDEC_ENGINES = 7  # NVDEC engines of an H100 or H200 (SXM); one ceiling pipeline per engine


@dataclass
class BenchSettings:
    """Every setting that changes a figure (all recorded in the JSON). ``defaults(device)`` sizes
    the grid for the device: a full CPU run on 2 cores took 5 minutes with ``--data-gop 16``."""

    quick: bool = False
    device: str = "auto"
    batch_sizes: tuple[int, ...] = (8, 16, 32)
    threads: tuple[int, ...] = ()  # threads / DataLoader workers; default: all cores
    frames: tuple[int, ...] = (8, 16)  # clip lengths T
    sizes: tuple[int, ...] = (112, 224)
    arch: str = "resnet50"  # backbone of the training-step row
    train_size: int = 224  # output size of the training-step row
    train_batch: int | None = None  # batch of the training-step row (default: the first batch size)
    window: Window = STEADY
    data: BenchDataSpec = field(default_factory=BenchDataSpec)
    data_dir: str | None = None  # a user's indexed folder instead of generated data
    nvdec_engines: int = NVDEC_ENGINES
    data_gop: int | None = None  # also run the loaders on a `bsp-dali transcode` copy with this GOP
    # pipeline-row variants at the first grid point (all cores, every batch size): other
    # decode-ahead depths (batches planned per file-list chunk) and pipeline counts than the
    # stage's defaults; a tuning instrument, kept out of the goals
    decode_ahead: tuple[int, ...] = ()
    pipelines: tuple[int, ...] = ()

    @classmethod
    def defaults(cls, device: str = "auto", quick: bool = False) -> "BenchSettings":
        if quick:
            return cls(quick=True, device=device, batch_sizes=(4,), frames=(8,), sizes=(64,), arch="resnet18",
                       train_size=64, window=QUICK, data=QUICK_DATA)
        if device == "cpu":
            return cls(device=device, batch_sizes=(8, 16), arch="resnet18", train_size=112, train_batch=2)
        return cls(device=device)


@dataclass(frozen=True)
class Goal:
    name: str
    target: float
    lower_is_better: bool = False

    def met(self, value: float | None) -> bool:
        if value is None or not np.isfinite(value):
            return False
        return value < self.target if self.lower_is_better else value >= self.target


# The goals of the open performance issues (GPU decode, transcode, CPU path).
GOALS = {
    "gpu": [Goal("pipeline clips/s", 500.0), Goal("pipeline / PyAV DataLoader (all cores)", 5.0),
            Goal("NVDEC utilization during the pipeline (mean %)", 80.0),
            Goal("train-step stall fraction", 0.05, lower_is_better=True)],
    "cpu": [Goal("pipeline / PyAV DataLoader (same cores)", 1.5)],
}
# With --data-gop: the same loaders on the transcoded copy (issue 13: transcode; 12 and 14: both data sets).
TRANSCODED_GOALS = {
    "gpu": [Goal("pipeline clips/s, transcoded", 1000.0)],
    "cpu": [Goal("pipeline / PyAV DataLoader (same cores), transcoded", 1.5)],
}
COMPARISON_GOALS = [Goal("decoded frames per clip, as given / transcoded", 5.0),
                    Goal("pipeline clips/s, transcoded / as given", 3.0)]
AS_GIVEN = "as given"


SWEEP_FLAGS = {"batch_sizes": "--batch-size", "frames": "--frames", "sizes": "--size", "threads": "--threads",
               "decode_ahead": "--decode-ahead", "pipelines": "--pipelines"}  # setting -> its bench option
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def validate(settings: BenchSettings, out: str | os.PathLike, tag: str | None) -> None:
    """What :func:`run_bench` checks before measuring anything (a bad value found at the end would
    throw the whole run away): ``tag`` a plain file-name tag, ``settings.arch`` a known backbone,
    the sweep values positive (clip lengths even), and ``out`` a folder that can be created and
    written. Raises ValueError naming the argument and the value."""
    from bsp_models import ARCHS

    if tag is not None and not (TAG.fullmatch(tag) and len(tag) <= 100):
        raise ValueError(f"--tag ({tag!r}) must be a plain file-name tag: letters, digits, '.', '_', '+', '-', "
                         "starting with a letter or digit (no path separators)")
    if settings.arch not in ARCHS:
        raise ValueError(f"--arch ({settings.arch!r}) must be one of {sorted(ARCHS)}")
    for name, flag in SWEEP_FLAGS.items():
        values = getattr(settings, name)
        if any(not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"{flag} values must be >= 1 (integers), got {list(values)}")
    if not settings.batch_sizes or not settings.frames or not settings.sizes:
        raise ValueError("--batch-size, --frames and --size must each hold at least one value")
    if any(T % 2 for T in settings.frames):
        raise ValueError(f"--frames must be even (T = 2*tau), got {list(settings.frames)}")
    ensure_writable_dir(out, "--out")


def run_bench(settings: BenchSettings, out: str | os.PathLike, tag: str | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every row of ``settings`` and write ``out/bench-<tag>.json`` (then .md and .png);
    the arguments are checked first (:func:`validate`)."""
    from ..gpu import GPUUnavailableError, resolve_device

    validate(settings, out, tag)
    say = progress or (lambda msg: log.info("%s", msg))
    device = resolve_device(settings.device)
    cores = os.cpu_count() or 1
    threads = settings.threads or (cores,)
    if settings.data_dir:
        say(f"loading the indexed folder {settings.data_dir}")
        index = user_data(settings.data_dir)
        data = describe_data(index)
    else:
        say(f"generating/loading benchmark data {settings.data}")
        index = bench_data(settings.data)
        data = describe_data(index, settings.data)
    if settings.window.quick:
        say(f"quick: {settings.window.describe()}")
    sampler = nvml_sampler(0) if device == "gpu" else None
    rows: list[dict[str, Any]] = []

    say(f"CPU decode ceiling: PyAV, whole files, {cores} processes")
    rows.append({**bench_cpu_ceiling(index, cores, settings.window), "data_set": AS_GIVEN})
    if device == "gpu":
        say(f"GPU decode ceiling: DALI video reader, whole files, {settings.nvdec_engines} pipelines")
        try:
            rows.append({**bench_gpu_ceiling(index, settings.nvdec_engines, settings.window, sampler),
                         "data_set": AS_GIVEN})
        except (GPUUnavailableError, RuntimeError) as e:  # a missing ceiling must not end the run
            log.warning("GPU decode ceiling failed: %s", e)
            rows.append({"row": "gpu-decode-ceiling", "ceiling": True, "error": str(e).splitlines()[0]})

    T0, S0 = settings.frames[0], settings.sizes[0]
    data_sets = {AS_GIVEN: data}
    rows += loader_rows(index, device, settings, threads, AS_GIVEN, sampler, say)
    if settings.data_gop:
        say(f"transcoding the data to GOP {settings.data_gop} (bsp-dali transcode, cached)")
        short = transcoded_data(index, settings.data_gop, workers=cores)
        name = f"transcoded GOP {settings.data_gop}"
        data_sets[name] = describe_data(short)
        say(f"CPU decode ceiling on the {name} copy")
        rows.append({**bench_cpu_ceiling(short, cores, settings.window), "data_set": name})
        rows += loader_rows(short, device, settings, threads, name, sampler, say, first_only=True)
    say("kernel vs copy")
    kB = settings.batch_sizes[-1]
    kS = S0 if settings.quick else 224
    rows.append({"T": T0, "size": kS, "batch": kB, "threads": None,
                 **bench_kernel(device, kB, T0, kS, 5 if settings.quick else 20)})
    say(f"training step TSM-{settings.arch}")
    tB = settings.train_batch or settings.batch_sizes[0]
    rows.append({"T": T0, "size": settings.train_size, "batch": tB, "threads": threads[-1],
                 **bench_train_step(index, device, settings.arch, tB, threads[-1],
                                    SynthesisConfig(tau=T0 // 2), settings.train_size, settings.window, sampler)})
    profile = stage_profile(index, settings.batch_sizes[0], threads[-1], SynthesisConfig(tau=T0 // 2), S0)
    attach_ceilings(rows, device)
    result = {
        "benchmark": "bsp-dali bench", "schema": 2, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": device, "machine": describe_machine(), "settings": settings_json(settings, threads),
        "data": data, "data_sets": data_sets, "rows": rows, "cpu_stage_profile": profile, "goals": evaluate_goals(rows, device, threads),
    }
    check_sane(result)
    write_results(result, Path(out), tag or (device + ("-quick" if settings.quick else "")))
    return result


def loader_rows(index: Any, device: str, settings: BenchSettings, threads: Sequence[int], data_set: str,
                sampler: Any, say: Callable[[str], None], first_only: bool = False) -> list[dict[str, Any]]:
    """Pipeline and baseline rows over the grid: every batch size x thread count at the first clip
    length and size, one point at the others (``first_only``: the first clip length and size only).
    Each row names its ``data_set``."""
    rows: list[dict[str, Any]] = []
    T0, S0 = settings.frames[0], settings.sizes[0]
    for T in settings.frames:
        for size in settings.sizes:
            if first_only and (T, size) != (T0, S0):
                continue
            syn = SynthesisConfig(tau=T // 2)
            for B in settings.batch_sizes:
                for n in threads:
                    if (T, size) != (T0, S0) and (B, n) != (settings.batch_sizes[0], threads[-1]):
                        continue  # full grid on the first (T, size) only; one point elsewhere
                    common = dict(T=T, size=size, batch=B, threads=n, data_set=data_set)
                    say(f"pipeline / baseline ({data_set}): T={T} size={size} batch={B} threads={n}")
                    rows.append({**common, **bench_pipeline(index, device, B, n, syn, size, settings.window,
                                                            sampler=sampler)})
                    if (T, size, n) == (T0, S0, threads[-1]):
                        for ahead, pipes in pipeline_variants(settings):
                            say(f"pipeline variant ({data_set}): batch={B} decode_ahead={ahead} pipelines={pipes}")
                            rows.append({**common, **bench_pipeline(index, device, B, n, syn, size, settings.window,
                                                                    sampler=sampler, ahead=ahead, pipelines=pipes)})
                    rows.append({**common, **bench_baseline(index, device, B, n, syn, size, settings.window,
                                                            sampler=sampler)})
                    for dec in ("pyav-tuned", "decord", "torchcodec"):
                        # reference baselines at the first point: PyAV with the pipeline's one-thread
                        # RGB conversion (both data sets), decord / torchcodec where installed
                        if (T, size, n) == (T0, S0, threads[-1]) and (
                                dec == "pyav-tuned" or (importable(dec) and data_set == AS_GIVEN)):
                            try:
                                rows.append({**common, **bench_baseline(index, device, B, n, syn, size,
                                                                        settings.window, decoder=dec,
                                                                        sampler=sampler)})
                            except Exception as e:  # noqa: BLE001 - an optional baseline must not end the run
                                log.warning("baseline with %s failed: %s", dec, e)
    return rows


def pipeline_variants(settings: BenchSettings) -> list[tuple[int | None, int | None]]:
    """(decode_ahead, pipelines) pairs to run beside the default pipeline row: every value of one
    swept with the other at its default, and every pair when both are given."""
    aheads: list[int | None] = list(settings.decode_ahead) or [None]
    pipes: list[int | None] = list(settings.pipelines) or [None]
    return [(a, p) for a in aheads for p in pipes if (a, p) != (None, None)]


def attach_ceilings(rows: list[dict[str, Any]], device: str) -> None:
    """Each loader row's decoded frames/s as a fraction of the ceiling of the decoder it uses:
    the GPU ceiling for the GPU pipeline, the CPU ceiling for everything that decodes on the CPU;
    the ceiling measured on the row's own data set, else the one on the data as given."""
    ceilings = {(r["row"], r.get("data_set", AS_GIVEN)): r for r in rows
                if r.get("ceiling") and "decoded_frames_per_s" in r}
    for r in rows:
        if r["row"] not in ("pipeline", "baseline") or "decoded_frames_per_s" not in r:
            continue
        name = "gpu-decode-ceiling" if (r["row"] == "pipeline" and device == "gpu") else "cpu-decode-ceiling"
        key = next((k for k in ((name, r.get("data_set", AS_GIVEN)), (name, AS_GIVEN)) if k in ceilings), None)
        r["ceiling_row"] = name if key is None or key[1] == AS_GIVEN else f"{name} ({key[1]})"
        r["fraction_of_ceiling"] = r["decoded_frames_per_s"] / ceilings[key]["decoded_frames_per_s"] if key else None


def settings_json(s: BenchSettings, threads: Sequence[int]) -> dict[str, Any]:
    d = {k: v for k, v in asdict(s).items() if k not in ("data", "window")}
    d["threads"] = list(threads)
    d["window"] = asdict(s.window) | {"statistic": "delivered quantity / wall time over the window after a "
                                                   "warm-up that drains every prefetch queue; halves split the "
                                                   "window's batches in two", "describe": s.window.describe()}
    d["data"] = asdict(s.data) if not s.data_dir else None
    return d


def evaluate_goals(rows: list[dict[str, Any]], device: str, threads: Sequence[int]) -> list[dict[str, Any]]:
    """Each goal measured against the rows: best batch size at all cores (``threads[-1]``), at the
    first clip length and size of the grid, against the PyAV baseline; on the data as given, and
    (when the bench ran with ``--data-gop``) on the transcoded copy and between the two."""
    n = threads[-1]
    first = next((r for r in rows if r["row"] == "pipeline"), None)

    def best(kind: str, data_set: str) -> dict[str, Any] | None:
        cands = [r for r in rows if r["row"] == kind and r.get("threads") == n and "clips_per_s" in r
                 and r.get("data_set", AS_GIVEN) == data_set
                 and (first is None or (r.get("T"), r.get("size")) == (first.get("T"), first.get("size")))
                 and not r.get("variant")  # the stage's defaults; variants are for tuning them
                and (kind != "baseline" or r["decoder"].startswith("pyav in "))]  # the plain PyAV loop
        return max(cands, key=lambda r: r["clips_per_s"]) if cands else None

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "clips_per_s") -> float | None:
        return a[key] / b[key] if a and b and b.get(key) else None

    pipe, base = best("pipeline", AS_GIVEN), best("baseline", AS_GIVEN)
    train = next((r for r in rows if r["row"] == "train-step"), {})
    measured = {
        "pipeline clips/s": pipe["clips_per_s"] if pipe else None,
        "pipeline / PyAV DataLoader (all cores)": ratio(pipe, base),
        "pipeline / PyAV DataLoader (same cores)": ratio(pipe, base),
        "NVDEC utilization during the pipeline (mean %)": (pipe or {}).get("utilization", {}).get("nvdec_mean"),
        "train-step stall fraction": train.get("stall_fraction"),
    }
    goals = list(GOALS[device])
    short = next((r["data_set"] for r in rows if r.get("data_set", AS_GIVEN) != AS_GIVEN), None)
    if short is not None:
        spipe, sbase = best("pipeline", short), best("baseline", short)
        measured |= {
            "pipeline clips/s, transcoded": spipe["clips_per_s"] if spipe else None,
            "pipeline / PyAV DataLoader (same cores), transcoded": ratio(spipe, sbase),
            "decoded frames per clip, as given / transcoded": ratio(pipe, spipe, "decoded_frames_per_clip"),
            "pipeline clips/s, transcoded / as given": ratio(spipe, pipe),
        }
        goals += TRANSCODED_GOALS[device] + COMPARISON_GOALS
    return [{"goal": g.name, "target": g.target, "lower_is_better": g.lower_is_better, "measured": measured[g.name],
             "met": g.met(measured[g.name])} for g in goals]


def check_sane(result: dict[str, Any]) -> None:
    """Every rate finite and positive, both halves of every window measured."""
    for r in result["rows"]:
        for k in ("clips_per_s", "frames_per_s", "decoded_frames_per_s", "GBps"):
            if k in r and not (np.isfinite(r[k]) and r[k] > 0):
                raise MeasurementError(f"benchmark row {r['row']} has an insane {k}: {r[k]}")
        for k, (a, b) in r.get("halves", {}).items():
            if not (np.isfinite(a) and np.isfinite(b) and a > 0 and b > 0):
                raise MeasurementError(f"benchmark row {r['row']} has an insane half of {k}: {a}, {b}")


__all__ = ["AS_GIVEN", "BenchSettings", "validate", "COMPARISON_GOALS", "GOALS", "TRANSCODED_GOALS", "Goal", "NVDEC_ENGINES", "attach_ceilings", "check_sane", "evaluate_goals",
           "pipeline_variants", "run_bench", "settings_json"]
