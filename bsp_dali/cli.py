"""The ``bsp-dali`` command line. Library modules log; only this module prints (STYLE.md, 10)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import __version__
from .config import SynthesisConfig, parse_types
from .gpu import GPUUnavailableError, cuda_available

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=(
        "bsp-dali: boundary-sensitive pre-training clips (diff-class, same-class, diff-speed, "
        "same-speed boundaries) synthesized on the GPU with DALI and CuPy, or on the CPU with the "
        "same semantics."
    ),
)
console = Console(stderr=True, soft_wrap=True)
out_console = Console(soft_wrap=True)


class UserError(Exception):
    """A mistake in the command line or the input data: shown as one line, no traceback."""


def _fail(msg: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def _synthesis_config(config: Optional[Path], tau: Optional[int], eps: Optional[Tuple[int, int]],
                      gamma: Optional[List[float]], t_range: Optional[Tuple[int, int]], stride: Optional[int],
                      types: Optional[List[str]], probs: Optional[List[float]]) -> SynthesisConfig:
    data: dict[str, Any] = {}
    if config is not None:
        if not config.is_file():
            raise UserError(f"config file {config} does not exist")
        try:
            loaded = json.loads(config.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"config file {config} is not valid JSON: {e}") from None
        data.update(loaded.get("synthesis", loaded))
    if tau is not None:
        data["tau"] = tau
    if eps:
        data["eps_range"] = list(eps)
    if gamma:
        data["gammas"] = gamma
    if t_range:
        data["t_range"] = list(t_range)
    if stride is not None:
        data["stride"] = stride
    if types:
        data["types"] = [t.key for t in parse_types(types)]
    if probs:
        data["probs"] = probs
    return SynthesisConfig.from_dict(data)


def _device(device: str) -> str:
    device = device.lower()
    if device not in ("auto", "cpu", "gpu"):
        raise UserError(f"--device must be auto, cpu or gpu, got {device!r}")
    if device == "auto":
        return "gpu" if cuda_available() else "cpu"
    if device == "gpu" and not cuda_available():
        raise UserError("--device gpu was asked for but no CUDA device is usable (is CuPy installed?)")
    return device


# Options shared by commands that synthesize.
OPT_CONFIG = typer.Option(None, "--config", help="JSON file of synthesis settings (CLI options override it).")
OPT_TAU = typer.Option(None, "--tau", help="Half clip length: clips have T = 2*tau frames (default 4).")
OPT_EPS = typer.Option(None, "--eps", help="diff_class transition half-width range, two values MIN MAX (default 1 2).")
OPT_GAMMA = typer.Option(None, "--gamma", help="diff_speed factor, repeatable (default 0.5 and 2.0).")
OPT_T = typer.Option(None, "--t-range", help="diff_speed change-point range, two values MIN MAX (default 2 T-2).")
OPT_STRIDE = typer.Option(None, "--stride", help="Source frame stride d (default 1).")
OPT_TYPES = typer.Option(None, "--types", help="Enabled boundary types, comma separated (default all four).")
OPT_PROBS = typer.Option(None, "--probs", help="Type probabilities, one per enabled type, repeatable.")


@app.command()
def preview(
    out: Path = typer.Option(Path("preview"), "--out", help="Output folder."),
    num: int = typer.Option(8, "--num", help="Number of samples."),
    size: Tuple[int, int] = typer.Option((64, 64), "--size", help="Frame size H W."),
    seed: int = typer.Option(0, "--seed", help="Planner seed: the same seed gives the same samples."),
    epoch: int = typer.Option(0, "--epoch", help="Epoch whose samples are shown."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or gpu (the CuPy kernel)."),
    demo_classes: int = typer.Option(4, "--demo-classes", help="Classes of the built-in demo set."),
    config: Optional[Path] = OPT_CONFIG, tau: Optional[int] = OPT_TAU, eps: Optional[Tuple[int, int]] = OPT_EPS,
    gamma: Optional[List[float]] = OPT_GAMMA, t_range: Optional[Tuple[int, int]] = OPT_T,
    stride: Optional[int] = OPT_STRIDE, types: Optional[List[str]] = OPT_TYPES,
    probs: Optional[List[float]] = OPT_PROBS,
) -> None:
    """Synthesize a few samples of the built-in demo set and write grid.png, samples.jsonl and
    clips/*.npy (uint8 T,H,W,3) to --out.

    Example: bsp-dali preview --out preview --num 8 --types diff_class,same_speed
    """
    from .demo import DemoReader, demo_index
    from .planner import Planner
    from .preview import write_preview

    try:
        if num < 1:
            raise UserError(f"--num ({num}) must be >= 1")
        h, w = size
        if h < 2 or w < 2:
            raise UserError(f"--size ({h} {w}) must be at least 2 2")
        cfg = _synthesis_config(config, tau, eps, gamma, t_range, stride, types, probs)
        dev = _device(device)
        index = demo_index(num_classes=demo_classes)
        planner = Planner(index, cfg, seed=seed)
        with Progress(TextColumn("synthesizing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("preview", total=num)
            summary = write_preview(out, planner, DemoReader(h, w), num, epoch=epoch, device=dev,
                                    progress=lambda k: bar.advance(task, k))
    except (UserError, ValueError, GPUUnavailableError) as e:
        _fail(str(e))
        return
    types_str = ", ".join(f"{k}: {v}" for k, v in sorted(summary["types"].items()))
    out_console.print(f"wrote {num} samples ({types_str}) on {dev} to {out}/: grid.png, samples.jsonl, clips/")


@app.command()
def plan(
    num: int = typer.Option(4, "--num", help="Number of samples."),
    seed: int = typer.Option(0, "--seed"),
    epoch: int = typer.Option(0, "--epoch"),
    start: int = typer.Option(0, "--start", help="First sample index."),
    demo_classes: int = typer.Option(4, "--demo-classes", help="Classes of the built-in demo set."),
    config: Optional[Path] = OPT_CONFIG, tau: Optional[int] = OPT_TAU, eps: Optional[Tuple[int, int]] = OPT_EPS,
    gamma: Optional[List[float]] = OPT_GAMMA, t_range: Optional[Tuple[int, int]] = OPT_T,
    stride: Optional[int] = OPT_STRIDE, types: Optional[List[str]] = OPT_TYPES,
    probs: Optional[List[float]] = OPT_PROBS,
) -> None:
    """Print the recipes (JSON lines) the planner draws for samples start..start+num-1 of the demo
    set: which frames of which videos, with which weights."""
    from .demo import demo_index
    from .planner import Planner

    try:
        cfg = _synthesis_config(config, tau, eps, gamma, t_range, stride, types, probs)
        planner = Planner(demo_index(num_classes=demo_classes), cfg, seed=seed)
        for i in range(start, start + num):
            sys.stdout.write(json.dumps(planner.plan(i, epoch).to_json()) + "\n")
    except (UserError, ValueError) as e:
        _fail(str(e))


@app.command()
def info() -> None:
    """Show the version, the default synthesis settings and whether a GPU path is usable."""
    cfg = SynthesisConfig()
    out_console.print(f"bsp-dali {__version__}")
    out_console.print(f"default synthesis settings: {json.dumps(cfg.to_dict())}")
    out_console.print(f"CUDA device usable (CuPy): {cuda_available()}")
    try:
        import nvidia.dali as dali  # noqa: F401

        out_console.print(f"DALI: {dali.__version__}")
    except Exception:  # noqa: BLE001
        out_console.print("DALI: not installed (CPU paths only)")


def main() -> None:
    app(prog_name="bsp-dali")


if __name__ == "__main__":
    main()
