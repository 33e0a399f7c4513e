"""The ``bsp-dali`` command line. Library modules log; only this module prints (STYLE.md, 10)."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import inspect
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import __version__
from .gpu import (GPUUnavailableError, cuda_available, cuda_device_count, dali_available, import_dali, no_gpu_reason,
                  resolve_device)
from .plan.config import SynthesisConfig
from .train.config import TrainConfig

app = typer.Typer(
    add_completion=False,
    rich_markup_mode="markdown",  # a docstring's hard line breaks join into paragraphs
    no_args_is_help=True,
    help=(
        "bsp-dali: boundary-sensitive pre-training clips (diff-class, same-class, diff-speed, "
        "same-speed boundaries) synthesized on the GPU with DALI and CuPy, or on the CPU with the "
        "same semantics."
    ),
)
console = Console(stderr=True, soft_wrap=True)
out_console = Console(soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        out_console.print(f"bsp-dali {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """bsp-dali: boundary-sensitive pre-training clips synthesized on the GPU with DALI and CuPy,
    or on the CPU with the same semantics."""


class UserError(Exception):
    """A mistake in the command line or the input data: shown as one line, no traceback."""


USER_ERROR_EXIT = 2  # a mistake in the command line, the data or the machine
DISK_FULL_EXIT = 3  # a full disk (or quota) while writing: finished work is kept


def _fail(msg: str, code: int = USER_ERROR_EXIT) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors every command shows as one line instead of a traceback: mistakes in the command
    line and the input (``UserError``; ``ValueError``, which the config dataclasses, the index, the
    planner, the transcoder and the checkpoint reader raise, naming the argument or file), a bad
    video, too many videos that failed to decode, no usable GPU, a failed training process and a
    measurement that could not be made. Imported when an error is being handled, not before, so a
    command loads only what it uses."""
    from .data.index import BadVideo
    from .decode.stage import DecodeFailures
    from .measure import MeasurementError
    from .train.distributed import WorkerFailed

    return (UserError, ValueError, BadVideo, GPUUnavailableError, DecodeFailures, WorkerFailed, MeasurementError)


def _disk_full(e: OSError) -> bool:
    from .data.index import is_disk_full
    from .train.checkpointer import CheckpointWriteError

    return is_disk_full(e) or isinstance(e, CheckpointWriteError)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Every command's body runs in this: a user-facing error (:func:`user_errors`) becomes one line
    on stderr and exit status 2; a full disk (or a checkpoint that could not be written) one line and
    exit status 3. Anything else is a bug and keeps its traceback."""
    try:
        yield
    except Exception as e:
        if isinstance(e, OSError) and _disk_full(e):
            _fail(str(e), code=DISK_FULL_EXIT)
        if not isinstance(e, user_errors()):
            raise
        _fail(str(e))


def _read_config(config: Optional[Path]) -> dict[str, Any]:
    """The JSON object of a --config file ({} without one)."""
    if config is None:
        return {}
    from .data.index import read_json

    try:
        loaded = read_json(config, "config file")
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from None
    if not isinstance(loaded, dict):
        raise UserError(f"config file {config} must hold a JSON object")
    return loaded


@contextlib.contextmanager
def _flag_names(*classes: type) -> Iterator[None]:
    """A config dataclass's error about one of its settings (``batch_size (0) must be >= 1``)
    names the command-line option instead (``--batch-size (0) ...``) where the setting has one."""
    try:
        yield
    except ValueError as e:
        msg = str(e)
        for cls in classes:
            for f in dataclasses.fields(cls):
                flag = f.metadata.get("flag")
                if flag and msg.startswith(f"{f.name} ("):
                    raise UserError(flag.split("/")[0] + msg[len(f.name):]) from None
        raise


def _synthesis_config(loaded: dict[str, Any], given: dict[str, Any]) -> SynthesisConfig:
    """The synthesis settings of a --config file's JSON object ``loaded`` (its "synthesis" section,
    or the whole object when it has no sections), overridden by the options ``given`` on the
    command line."""
    sectioned = any(k in loaded for k in ("synthesis", "train"))
    with _flag_names(SynthesisConfig):
        return SynthesisConfig.from_dict({**(loaded.get("synthesis", {}) if sectioned else loaded), **given})


def _device(device: str) -> str:
    try:
        return resolve_device(device)
    except (ValueError, GPUUnavailableError) as e:
        raise UserError(f"--device: {e}") from None


# ---------------------------------------------------------------------------------- options from configs
# A config dataclass declares each setting once, with its help text and its flag
# (bsp_dali.plan.config.setting); the commands below take their options from those declarations.
OPT_CONFIG = typer.Option(None, "--config", help="JSON file of settings (CLI options override it).")


def _cli_type(tp: Any) -> Any:
    """What typer parses for a field of type ``tp``: a fixed-length tuple is an option of that many
    values, a variable-length tuple a repeatable option, an enum its name; ``| None`` is dropped."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        (tp,) = [a for a in args if a is not type(None)]
        return _cli_type(tp)
    if typing.get_origin(tp) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return List[_cli_type(args[0])]
        return Tuple[tuple(_cli_type(a) for a in args)]
    return str if isinstance(tp, type) and issubclass(tp, enum.Enum) else tp


def _cli_value(value: Any) -> Any:
    """A config value as the command line writes it (enum members by name, tuples as lists)."""
    if isinstance(value, enum.Enum):
        return getattr(value, "key", value.value)
    if isinstance(value, (tuple, list)):
        return [_cli_value(v) for v in value]
    return value


def _option(cls: type, name: str, panel: Optional[str] = None) -> tuple[Any, Any]:
    """(annotation, typer.Option) of the option that the field ``name`` of ``cls`` declares."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    tp = _cli_type(typing.get_type_hints(cls)[name])
    default = _cli_value(default)
    if typing.get_origin(tp) is tuple and default is not None:
        default = tuple(default)
    option = typer.Option(default, f.metadata["flag"], help=f.metadata["help"], metavar=f.metadata["metavar"],
                          rich_help_panel=panel)
    return Optional[tp], option


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the option ``name`` was written on the command line (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _is_enum_list(tp: Any) -> bool:
    """A repeatable option of names (``tuple[BoundaryType, ...]``), which may also be comma separated."""
    return any(isinstance(a, type) and issubclass(a, enum.Enum) for a in typing.get_args(tp))


def _from_cli(value: Any, enum_list: bool) -> Any:
    """An option's value as the config dataclass takes it."""
    if enum_list:  # --types diff_class,same_speed or --types diff_class --types same_speed
        return [part.strip() for v in value for part in str(v).split(",") if part.strip()]
    return list(value) if isinstance(value, (tuple, list)) else value


def config_options(**groups: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per field with a flag in each config dataclass of ``groups``
    (``synthesis=SynthesisConfig``). The command receives, as the keyword argument of each group,
    a dict of the settings written on the command line (``synthesis={"tau": 2}``): a default
    stays with the dataclass, so a --config file can set what the command line does not."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn)
        params = [p.replace(annotation=hints.get(p.name, p.annotation))
                  for p in inspect.signature(fn).parameters.values() if p.name not in groups]
        generated: dict[str, tuple[str, str, bool]] = {}  # parameter -> (group, field, enum list?)
        for group, cls in groups.items():
            field_types = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if not f.metadata.get("flag"):
                    continue
                annotation, option = _option(cls, f.name, panel=f"{group.capitalize()} settings")
                param = f"{group}__{f.name}"
                params.append(inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=option,
                                                annotation=annotation))
                generated[param] = (group, f.name, _is_enum_list(field_types[f.name]))
        params.append(inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

        @functools.wraps(fn)
        def command(*args: Any, _ctx: typer.Context, **kwargs: Any) -> Any:
            given: dict[str, dict[str, Any]] = {group: {} for group in groups}
            for param, (group, name, enum_list) in generated.items():
                value = kwargs.pop(param)
                if _given(_ctx, param):
                    given[group][name] = _from_cli(value, enum_list)
            return fn(*args, **kwargs, **given)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


# Checkpoints are read weights-only; this is the one way to unpickle a refused file in full.
OPT_TRUST = _option(TrainConfig, "trust_checkpoint")[1]


def _warn_trust() -> None:
    console.print("[bold yellow]warning:[/] --trust-checkpoint: a checkpoint that a weights-only load refuses "
                  "will be unpickled in full, which runs any code it holds. Use it only for files you trust.")


def _progress(label: str) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


@app.command()
def index(
    data_root: Path = typer.Argument(..., help="Data root: a Kinetics-layout folder ([split/]class/video.mp4)."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="Kinetics annotation CSV (label,youtube_id,time_start,time_end,split)."),
    list_file: Optional[Path] = typer.Option(None, "--list", help="List file of 'path label' lines (paths relative to DATA_ROOT)."),
    split: Optional[str] = typer.Option(None, "--split", help="Only this split (a sub-folder, or the CSV's split column)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Manifest to write (default DATA_ROOT/bsp-dali-manifest.json)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Machine-readable report (default: next to the manifest, .report.json)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Parallel probe processes (default: all cores)."),
    min_frames: Optional[int] = typer.Option(None, "--min-frames", help="Exclude videos shorter than this (default: what the default clip settings need)."),
    probe: str = typer.Option("packets", "--probe", help="packets: read the container only (fast; frame count, keyframes, size, checked against the header); decode: decode every frame (slow; also names files whose payload does not decode)."),
) -> None:
    """Probe every video and write the manifest the other commands read.

    Unusable files (empty, not a video, no video stream, truncated, too short, listed but missing;
    with --probe decode also undecodable payloads) are excluded and reported with their reason; the
    exit status is non-zero only when nothing usable is left. Re-running skips files that did not
    change (a --probe decode run re-probes files an earlier run read by packets only).
    """
    from .data.index import ensure_writable_file, is_disk_full, write_json
    from .data.ingest import MANIFEST_NAME, index_data
    from .data.probe import ProbeMode
    from .plan.planner import min_frames_needed

    with one_line_errors():
        need = min_frames if min_frames is not None else min_frames_needed(SynthesisConfig())
        if need < 1:
            raise UserError(f"--min-frames ({need}) must be >= 1")
        if workers is not None and workers < 1:
            raise UserError(f"--workers ({workers}) must be >= 1")
        try:
            mode = ProbeMode.parse(probe)
        except ValueError as e:
            raise UserError(f"--probe: {e}") from None
        manifest = out or (data_root / MANIFEST_NAME)
        report_path = report or manifest.with_name(manifest.name.replace(".json", "") + ".report.json")
        ensure_writable_file(manifest, "--out" if out else "manifest")  # before any file is probed
        ensure_writable_file(report_path, "--report")
        with _progress(f"probing ({mode.value})") as bar:
            task = bar.add_task("probe", total=None)
            rep = index_data(data_root, annotations=annotations, list_file=list_file, split=split,
                             min_frames=need, manifest=manifest, workers=workers,
                             progress_total=lambda n: bar.update(task, total=n),
                             progress=lambda k: bar.advance(task, k), probe=mode)
        try:
            report_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(report_path, rep.to_json(), indent=1)
        except OSError as e:
            if is_disk_full(e):
                raise
            raise UserError(f"--report {report_path}: cannot be written ({e.strerror or e}); "
                            f"the manifest {manifest} was written") from None
    idx = rep.index
    out_console.print(f"{len(idx)} usable videos in {len(idx.classes)} classes "
                      f"({rep.probed} probed by {mode.value}, {rep.reused} unchanged since the last index)")
    if rep.decoded_instead:
        out_console.print(f"{len(rep.decoded_instead)} decoded in full because their packets could not vouch "
                          f"for the frames (first: {rep.decoded_instead[0]['path']}: {rep.decoded_instead[0]['why']})")
    if rep.excluded:
        out_console.print(f"{len(rep.excluded)} excluded: " +
                          ", ".join(f"{k}: {v}" for k, v in sorted(rep.reasons().items())))
        for e in rep.excluded[:10]:
            out_console.print(f"  {e['path']}: {e['reason']}")
        if len(rep.excluded) > 10:
            out_console.print(f"  ... {len(rep.excluded) - 10} more in {report_path}")
    out_console.print(f"manifest: {manifest}\nreport: {report_path}")


@app.command()
def transcode(
    src: Path = typer.Argument(..., help="Data root to read: a Kinetics-layout folder ([split/]class/video.mp4), or the root --annotations/--list resolve against."),
    dst: Path = typer.Argument(..., help="Output folder (created): the same layout, every video as .mp4."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="Kinetics annotation CSV (copied to DST; it names no paths)."),
    list_file: Optional[Path] = typer.Option(None, "--list", help="List file of 'path label' lines (rewritten into DST to point at the outputs)."),
    split: Optional[str] = typer.Option(None, "--split", help="Only this split (a sub-folder, or the CSV's split column)."),
    gop: int = typer.Option(16, "--gop", help="Frames from one keyframe to the next (exact)."),
    bframes: int = typer.Option(0, "--bframes", help="B-frames between references (0: none, the fastest to seek)."),
    short_side: int = typer.Option(256, "--short-side", help="Scale the short side to this (aspect kept, even dimensions)."),
    keep_size: bool = typer.Option(False, "--keep-size", help="Keep the source size (rounded to even) instead of --short-side."),
    crf: int = typer.Option(23, "--crf", help="Quality: libx264 constant rate factor (NVENC: -cq), 0..51, lower is better and larger."),
    preset: str = typer.Option("veryfast", "--preset", help="libx264 speed preset (ultrafast..veryslow)."),
    keep_audio: bool = typer.Option(False, "--keep-audio", help="Keep the audio (copied, or re-encoded to AAC); dropped by default."),
    encoder: str = typer.Option("auto", "--encoder", help="auto (NVENC where PyAV can open it, else libx264), libx264 or h264_nvenc."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Parallel processes, one video each (default: all cores)."),
) -> None:
    """Re-encode every video once for fast random access: H.264, a keyframe every --gop frames, no
    B-frames, short side 256, constant frame rate. Every output has its source's frames, in order.

    Resumable (a rerun skips finished outputs) and atomic (each output is renamed into place when
    complete). Failing videos are listed and skipped; a full disk stops the run, keeping finished
    outputs. Then: bsp-dali index DST (with the same --annotations/--list name, found in DST).
    See docs/transcode.md.
    """
    import logging

    from rich.progress import ProgressColumn, TimeRemainingColumn
    from rich.text import Text

    from .data.transcode import TranscodeSettings, transcode_dataset

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:.2f} videos/s" if task.speed else "-- videos/s")

    logging.getLogger("bsp_dali.data.transcode").setLevel(logging.ERROR)  # failures are printed below
    with one_line_errors():
        settings = TranscodeSettings(gop=gop, bframes=bframes, short_side=short_side, keep_size=keep_size, crf=crf,
                                     preset=preset, keep_audio=keep_audio, encoder=encoder)
        with Progress(TextColumn("transcoding"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("transcode", total=None)
            rep = transcode_dataset(src, dst, settings, annotations=annotations, list_file=list_file, split=split,
                                    workers=workers, progress_total=lambda n: bar.update(task, total=n),
                                    progress=lambda k: bar.advance(task, k))
    s = rep.summary()
    mb = 1024 * 1024
    out_console.print(rep.encoder_note)
    out_console.print(f"{s['done']} transcoded, {s['skipped']} already done, {s['failed']} failed "
                      f"({s['frames']} frames; {s['size_in'] / mb:.1f} MiB in -> {s['size_out'] / mb:.1f} MiB out"
                      + (f", x{s['size_ratio']:.2f}" if s["size_ratio"] else "") + f") in {s['seconds']:.1f} s"
                      + (f", {s['videos_per_second']:.2f} videos/s" if s["videos_per_second"] else ""))
    vfr = [v for v in rep.videos if v.vfr and v.status == "done"]
    if vfr:
        out_console.print(f"{len(vfr)} variable-frame-rate sources converted to their average rate, e.g. "
                          f"{vfr[0].src} -> {vfr[0].fps_out:.3f} fps")
    for v in rep.failed[:10]:
        out_console.print(f"[yellow]failed {v.src}: {v.reason}[/]")
    if len(rep.failed) > 10:
        out_console.print(f"  ... {len(rep.failed) - 10} more in the report")
    out_console.print(f"report: {dst / 'bsp-dali-transcode.report.json'}")
    if rep.written_list:
        out_console.print(f"index it: bsp-dali index {dst} --{rep.layout == 'csv' and 'annotations' or 'list'} "
                          f"{rep.written_list}" + (f" --split {split}" if split else ""))
    else:
        out_console.print(f"index it: bsp-dali index {dst}" + (f" --split {split}" if split else ""))
    if rep.failed and not (s["done"] or s["skipped"]):
        raise typer.Exit(1)


@app.command()
@config_options(synthesis=SynthesisConfig)
def preview(
    data: Optional[Path] = typer.Argument(None, help="A manifest, or a folder indexed with `bsp-dali index` (default: the built-in demo set)."),
    out: Path = typer.Option(Path("preview"), "--out", help="Output folder."),
    num: int = typer.Option(8, "--num", help="Number of samples."),
    size: Optional[Tuple[int, int]] = typer.Option(None, "--size", help="Frame size H W (default 64 64 for the demo, 112 112 for data)."),
    augment: bool = typer.Option(False, "--augment/--no-augment", help="Random resized crop and flip as in training (default: plain resize to --size)."),
    seed: int = typer.Option(0, "--seed", help="Planner seed: the same seed gives the same samples."),
    epoch: int = typer.Option(0, "--epoch", help="Epoch whose samples are shown."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or gpu (NVDEC + the CUDA kernel)."),
    decoder: str = typer.Option("auto", "--decoder", help="auto, dali or pyav (CPU decoding of H.264 always uses PyAV)."),
    gif: bool = typer.Option(False, "--gif", help="Also write an animated GIF per sample."),
    demo_classes: int = typer.Option(4, "--demo-classes", help="Classes of the built-in demo set."),
    config: Optional[Path] = OPT_CONFIG,
    *, synthesis: dict[str, Any],
) -> None:
    """Synthesize a few samples and write grid.png, samples.jsonl and clips/*.npy (uint8 T,H,W,3)
    to --out.

    Example: bsp-dali preview data/kinetics --out preview --num 8 --types diff_class,same_speed
    """
    from .data.demo import demo_index
    from .data.ingest import load_data
    from .plan.augment import SpatialConfig, SpatialMode
    from .tools.preview import write_preview

    with one_line_errors():
        if num < 1:
            raise UserError(f"--num ({num}) must be >= 1")
        h, w = size if size else ((64, 64) if data is None else (112, 112))
        if h < 2 or w < 2:
            raise UserError(f"--size ({h} {w}) must be at least 2 2")
        cfg = _synthesis_config(_read_config(config), synthesis)
        dev = _device(device)
        idx = demo_index(num_classes=demo_classes, size=(h, w)) if data is None else load_data(data)
        spatial = SpatialConfig(size=(h, w), mode=SpatialMode.TRAIN if augment else SpatialMode.RESIZE)
        with _progress("synthesizing") as bar:
            task = bar.add_task("preview", total=num)
            summary = write_preview(out, idx, num, synthesis=cfg, spatial=spatial, seed=seed, epoch=epoch,
                                    device=dev, decoder=decoder, gif=gif, progress=lambda k: bar.advance(task, k))
    types_str = ", ".join(f"{k}: {v}" for k, v in sorted(summary["types"].items()))
    out_console.print(f"wrote {num} samples ({types_str}) on {summary['device']} (decoder: {summary['decoder']}) "
                      f"to {out}/: grid.png, samples.jsonl, clips/")
    for path, reason in summary["failures"]:
        out_console.print(f"[yellow]replaced samples of {path}: {reason}[/]")


@app.command("train")
@config_options(train=TrainConfig, synthesis=SynthesisConfig)
def train_cmd(
    data: Path = typer.Argument(..., help="A manifest, or a folder indexed with `bsp-dali index`."),
    config: Optional[Path] = OPT_CONFIG,
    *, train: dict[str, Any], synthesis: dict[str, Any],
) -> None:
    """Pre-train a TSM encoder on synthesized boundaries (or the action/two-head/distill variants).

    Defaults follow TSM and the BSP paper (docs/training.md). A JSON --config may hold a "train"
    section (every TrainConfig field of bsp_dali/train/config.py, these option names with underscores) and
    a "synthesis" section; options override it. Killing a run loses at most the steps since the last
    checkpoint; Ctrl-C stops it, and running the same command again resumes. Every checkpoint is
    read weights-only (no code runs); see --trust-checkpoint.
    """
    import logging

    from .train.loop import TrainingInterrupted, train as run_training

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with one_line_errors():  # a full disk while writing a checkpoint or the run's files: exit 3
        loaded = _read_config(config)
        base = loaded.get("train", {})
        if "trust_checkpoint" in base:
            raise UserError(f"config file {config}: trust_checkpoint can only be given as --trust-checkpoint")
        if train.get("trust_checkpoint"):
            _warn_trust()
        syn = _synthesis_config(loaded, synthesis)
        with _flag_names(TrainConfig):
            cfg = TrainConfig.from_dict({**base, **train, "data": str(data), "synthesis": syn})
        try:
            summary = run_training(cfg)
        except TrainingInterrupted as e:
            if e.rank == 0:
                console.print(e.message, style="yellow", markup=False)
            raise typer.Exit(130)
    val = summary.get("validation") or {}
    acc = val.get("val_accuracy")
    out_console.print(f"done: {summary.get('step')} steps in {summary.get('minutes', 0):.1f} min"
                      + (f", validation accuracy {100 * acc:.1f}% on {val.get('val_clips')} clips" if acc is not None else "")
                      + f"; checkpoint {summary.get('checkpoint')}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Output folder (data, run, preview, report)."),
    minutes: float = typer.Option(7.0, "--minutes", help="Training time cap in minutes (the 300-step schedule takes about a minute on 2 CPU cores)."),
    size: int = typer.Option(32, "--size", help="Training crop size."),
    classes: int = typer.Option(4, "--classes", help="Procedural action classes (2..6)."),
    per_class: int = typer.Option(12, "--per-class", help="Videos per class."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs (default: 1 if present, else CPU)."),
) -> None:
    """The main job on built-in data: write procedurally animated action videos, index them,
    pre-train a TSM-ResNet-18 BSP encoder for a few minutes (GPU if present, else CPU), report 4-way
    boundary accuracy on clips from held-out videos, and write the preview grid, the checkpoint
    and report.md.
    """
    import logging

    from .tools.demo_job import run_demo

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with one_line_errors():
        if gpus is None:
            gpus = 1 if cuda_available() else 0
        # run_demo checks every argument before it writes a video
        result = run_demo(out, minutes=minutes, size=size, classes=classes, per_class=per_class, gpus=gpus)
    acc = result["boundary_accuracy"]
    if acc is None:
        out_console.print("[yellow]no validation: the held-out videos could not supply every clip type "
                          "(use more --per-class)[/]")
    else:
        out_console.print(f"4-way boundary accuracy on {result['val_clips']} held-out clips: "
                          f"{100 * acc:.1f}% (chance {100 * result['chance']:.0f}%)")
    out_console.print(f"report: {result['files']['report']}  preview: {result['files']['preview']}  "
                      f"checkpoint: {result['files']['checkpoint']}")


@app.command()
def bench(
    out: Path = typer.Option(Path("benchmarks/results"), "--out", help="Folder for bench-<tag>.json/.md/.png."),
    quick: bool = typer.Option(False, "--quick", help="Small data, one setting and a short timing window: under 2 minutes on 2 CPU cores (a smoke test; its figures are not steady-state)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or gpu."),
    data: Optional[Path] = typer.Option(None, "--data", help="Run every row on this folder (indexed with `bsp-dali index`) instead of generated data."),
    data_gop: Optional[int] = typer.Option(None, "--data-gop", help="Also run the loaders on a copy of the data re-encoded by `bsp-dali transcode` with a keyframe every N frames (e.g. 16; cached), and compare: decoded frames per clip and clips/s, as given vs transcoded."),
    batch_sizes: Optional[List[int]] = typer.Option(None, "--batch-size", help="Batch sizes to sweep, repeatable (default: GPU 8 16 32, CPU 8 16)."),
    threads: Optional[List[int]] = typer.Option(None, "--threads", help="Thread/worker counts to sweep, repeatable (default: all cores)."),
    frames: Optional[List[int]] = typer.Option(None, "--frames", help="Clip lengths T to sweep, repeatable (default 8 16)."),
    sizes: Optional[List[int]] = typer.Option(None, "--size", help="Output sizes to sweep, repeatable (default 112 224)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Backbone of the training-step row (default: GPU resnet50, CPU resnet18)."),
    min_batches: Optional[int] = typer.Option(None, "--min-batches", help="Timing window: at least this many batches after the warm-up (default 30)."),
    min_seconds: Optional[float] = typer.Option(None, "--min-seconds", help="Timing window: at least this many seconds (default 10)."),
    nvdec_engines: Optional[int] = typer.Option(None, "--nvdec-engines", help="Pipelines of the GPU decode ceiling, one per NVDEC engine (default 7: H100/H200)."),
    decode_ahead: Optional[List[int]] = typer.Option(None, "--decode-ahead", help="Also run the pipeline row with this many batches planned per file-list chunk (repeatable; a tuning sweep at the first grid point, kept out of the goals; default: the stage's, 2 on GPU, 1 on CPU)."),
    pipelines: Optional[List[int]] = typer.Option(None, "--pipelines", help="Also run the pipeline row with this many decode pipelines (repeatable; a tuning sweep like --decode-ahead; default: one per NVDEC engine on GPU)."),
    tag: Optional[str] = typer.Option(None, "--tag", help="File name tag (default: gpu or cpu, -quick)."),
) -> None:
    """Measure, on generated Kinetics-like H.264 (or --data), the steady-state delivered rate of the
    pipeline against a PyTorch DataLoader baseline (PyAV workers, NumPy synthesis), both in clips/s
    and in decoded frames/s against the CPU and GPU decode ceilings; the kernel against a device copy;
    and the data stall of a TSM training step. Writes JSON, Markdown and a PNG naming the machine
    and every setting.
    """
    import logging

    from .bench import BenchSettings, run_bench
    from .measure import STEADY, Window

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with one_line_errors():
        dev = _device(device)
        s = BenchSettings.defaults(dev, quick=quick)
        for name, val in (("batch_sizes", batch_sizes), ("threads", threads), ("frames", frames), ("sizes", sizes),
                          ("decode_ahead", decode_ahead), ("pipelines", pipelines)):
            if val:  # checked with every other setting by run_bench (bench.run.validate) before measuring
                setattr(s, name, tuple(val))
        if arch:
            s.arch = arch
        if min_batches is not None or min_seconds is not None:
            mb = s.window.min_batches if min_batches is None else min_batches
            ms = s.window.min_seconds if min_seconds is None else min_seconds
            if mb < 2 or ms < 0:
                raise UserError(f"--min-batches ({mb}) must be >= 2 and --min-seconds ({ms}) >= 0")
            s.window = Window(mb, ms, quick=quick or mb < STEADY.min_batches or ms < STEADY.min_seconds)
        if nvdec_engines is not None:
            if nvdec_engines < 1:
                raise UserError(f"--nvdec-engines ({nvdec_engines}) must be >= 1")
            s.nvdec_engines = nvdec_engines
        if data is not None:
            s.data_dir = str(data)
        if data_gop is not None:
            if data_gop < 1:
                raise UserError(f"--data-gop ({data_gop}) must be >= 1")
            s.data_gop = data_gop
        result = run_bench(s, out, tag=tag, progress=lambda m: console.print(f"[dim]{m}[/]"))
    if result["settings"]["window"]["quick"]:
        out_console.print("[yellow]shortened timing window: these figures are not steady-state[/]")
    for r in result["rows"]:
        if r.get("ceiling") and "decoded_frames_per_s" in r:
            out_console.print(f"{r['row']}: {r['decoded_frames_per_s']:.0f} decoded frames/s ({r['decoder']})")
    for g in result["goals"]:
        v = "n/a" if g["measured"] is None else f"{g['measured']:.3f}"
        op = "<" if g["lower_is_better"] else ">="
        out_console.print(f"{g['goal']}: {v} (goal {op} {g['target']}) {'met' if g['met'] else 'missed'}")
    out_console.print(f"results: {out}/bench-{tag or (result['device'] + ('-quick' if quick else ''))}.md")


@app.command()
def extract(
    videos: Path = typer.Argument(..., help="Untrimmed videos: a folder, a list file (one path per line), a manifest, or one video file."),
    checkpoint: List[Path] = typer.Option(..., "--checkpoint", help="bsp-dali checkpoint; repeat for two-stream (features concatenated in this order)."),
    out: Path = typer.Option(..., "--out", help="HDF5 file (--format hdf5) or folder (csv, npy)."),
    fmt: str = typer.Option("hdf5", "--format", help="hdf5 (G-TAD), csv (BSN-style, rescaled) or npy."),
    snippet: Optional[int] = typer.Option(None, "--snippet", help="Frames per snippet (default: the encoders' clip length, 8)."),
    stride: Optional[int] = typer.Option(None, "--stride", help="Frames between snippet starts (default: --snippet)."),
    rescale_to: int = typer.Option(100, "--rescale", help="Temporal points of the csv format."),
    batch_size: int = typer.Option(64, "--batch-size", help="Snippets per forward pass."),
    size: Optional[int] = typer.Option(None, "--size", help="Centre-crop size (default: the training size)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or gpu."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Probe processes."),
    trust_checkpoint: bool = OPT_TRUST,
) -> None:
    """Snippet features of untrimmed videos for temporal localization (G-TAD, BSN, 2D-TAN, LGI).

    Snippets of --snippet consecutive frames start every --stride frames; a video of F frames
    gives ceil(F / stride) snippets, the last ones padded with the last frame. Finished videos are
    skipped on a rerun; a bad video is reported and skipped.
    """
    import logging

    from .tools.extract import extract as run_extract

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with one_line_errors():
        dev = _device(device)
        if batch_size < 1:
            raise UserError(f"--batch-size ({batch_size}) must be >= 1")
        if trust_checkpoint:
            _warn_trust()
        with _progress("extracting") as bar:
            task = bar.add_task("videos", total=None)
            rep = run_extract(videos, checkpoint, out, fmt=fmt, snippet=snippet, stride=stride, rescale_to=rescale_to,
                              batch_size=batch_size, size=size, device=dev, workers=workers,
                              trust_checkpoint=trust_checkpoint,
                              progress=lambda k, n, _: bar.update(task, completed=k, total=n))
    rate = len(rep.written) / rep.seconds if rep.seconds else 0.0
    out_console.print(f"{len(rep.written)} videos written ({rep.snippets} snippets, {rate:.2f} videos/s, "
                      f"{rep.snippets / rep.seconds if rep.seconds else 0:.1f} snippets/s), "
                      f"{len(rep.skipped)} already done, {len(rep.failed)} failed -> {out}")
    for path, reason in rep.failed:
        out_console.print(f"[yellow]skipped {path}: {reason}[/]")
    if rep.failed and not rep.written and not rep.skipped:
        out_console.print(f"[yellow]no video could be extracted: nothing written to {out}[/]")
        raise typer.Exit(1)


@app.command("inspect")
def inspect_cmd(
    data: Path = typer.Argument(..., help="A manifest or an indexed folder (e.g. demo-out/data)."),
    checkpoint: List[str] = typer.Option([], "--checkpoint", help="[NAME=]PATH of a bsp-dali checkpoint, repeatable."),
    untrained: bool = typer.Option(False, "--untrained", help="Add a randomly initialised encoder of the same architecture."),
    out: Path = typer.Option(Path("inspect"), "--out", help="Folder for separability.png and separability.json."),
    pairs: int = typer.Option(200, "--pairs", help="Pairs of each kind."),
    split: str = typer.Option("val", "--split", help="val (the checkpoint's held-out videos) or all."),
    size: Optional[int] = typer.Option(None, "--size", help="Frame size (default: the checkpoint's training size)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or gpu."),
    trust_checkpoint: bool = OPT_TRUST,
) -> None:
    """The paper's Fig. 4: distributions of feature differences of snippet pairs with and without a
    boundary, and a separability score (ROC AUC) per encoder."""
    from bsp_models import create_encoder, encoder_from_bsp_checkpoint, load_bsp_checkpoint

    from .data.index import split_train_val
    from .data.ingest import load_data
    from .tools.separability import inspect as run_inspect

    with one_line_errors():
        if not checkpoint and not untrained:
            raise UserError("give at least one --checkpoint (and/or --untrained)")
        if pairs < 2:
            raise UserError(f"--pairs ({pairs}) must be >= 2")
        if size is not None and size < 8:
            raise UserError(f"--size ({size}) must be >= 8 (or left out for the checkpoint's training size)")
        if split not in ("val", "all"):
            raise UserError(f"--split must be val or all, got {split!r}")
        dev = _device(device)
        if trust_checkpoint and checkpoint:
            _warn_trust()
        index = load_data(data)
        encs = []
        cfg0 = None
        for spec in checkpoint:
            name, _, path = spec.rpartition("=")
            name = name or Path(path).parent.parent.name or Path(path).stem
            state = load_bsp_checkpoint(path, trust=trust_checkpoint)
            cfg0 = cfg0 or state["config"]
            encs.append((name, encoder_from_bsp_checkpoint(state)))
        if untrained:
            import torch

            torch.manual_seed(seed)
            arch = cfg0["model"]["arch"] if cfg0 else "resnet18"
            T = cfg0["model"]["num_frames"] if cfg0 else 8
            encs.append(("untrained", create_encoder(arch, T)))
        if split == "val" and cfg0 is not None:
            n_all = len(index)
            _, index = split_train_val(index, cfg0.get("val_fraction", 0.05), cfg0.get("seed", 0))
            if len(index) == 0:
                raise UserError(f"none of the {n_all} videos of {data} is held out by the checkpoint's split "
                                f"(val_fraction {cfg0.get('val_fraction', 0.05)}); use --split all to inspect them all")
        sz = size or (cfg0.get("size", 64) if cfg0 else 64)
        result = run_inspect(index, encs, out, pairs=pairs, seed=seed, size=sz, device=dev)
    for name, r in result["encoders"].items():
        out_console.print(f"{name}: separability (ROC AUC) {r['separability_auc']:.3f}")
    out_console.print(f"wrote {out}/separability.png and separability.json")


@app.command()
@config_options(synthesis=SynthesisConfig)
def plan(
    num: int = typer.Option(4, "--num", help="Number of samples."),
    seed: int = typer.Option(0, "--seed"),
    epoch: int = typer.Option(0, "--epoch"),
    start: int = typer.Option(0, "--start", help="First sample index."),
    demo_classes: int = typer.Option(4, "--demo-classes", help="Classes of the built-in demo set."),
    config: Optional[Path] = OPT_CONFIG,
    *, synthesis: dict[str, Any],
) -> None:
    """Print the recipes (JSON lines) the planner draws for samples start..start+num-1 of the demo
    set: which frames of which videos, with which weights."""
    from .data.demo import demo_index
    from .plan.planner import Planner

    with one_line_errors():
        if num < 1:
            raise UserError(f"--num ({num}) must be >= 1")
        if start < 0 or epoch < 0:
            raise UserError(f"--start ({start}) and --epoch ({epoch}) must be >= 0")
        cfg = _synthesis_config(_read_config(config), synthesis)
        planner = Planner(demo_index(num_classes=demo_classes), cfg, seed=seed)
        for i in range(start, start + num):
            sys.stdout.write(json.dumps(planner.plan(i, epoch).to_json()) + "\n")


@app.command()
def info() -> None:
    """Show the version, the default synthesis settings and whether a GPU path is usable."""
    cfg = SynthesisConfig()
    out_console.print(f"bsp-dali {__version__}")
    out_console.print(f"default synthesis settings: {json.dumps(cfg.to_dict())}")
    n = cuda_device_count()
    out_console.print(f"CUDA devices usable: {n}" + ("" if n else f" ({no_gpu_reason()})"))
    if dali_available():
        out_console.print(f"DALI: {import_dali().__version__}")
    else:
        out_console.print("DALI: not installed (CPU paths only)")


def main() -> None:
    app(prog_name="bsp-dali")


if __name__ == "__main__":
    main()
