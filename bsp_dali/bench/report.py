"""The bench's results as files: ``bench-<tag>.json`` (everything), ``.md`` (tables), ``.png``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_results(result: dict[str, Any], out: Path, tag: str) -> dict[str, Path]:
    """Write the JSON (first), the Markdown and the PNG; a plot that fails is logged, not raised.
    Returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"bench-{tag}.json", "md": out / f"bench-{tag}.md", "png": out / f"bench-{tag}.png"}
    paths["json"].write_text(json.dumps(result, indent=1))  # first: the data survives a failure below
    paths["md"].write_text(markdown(result))
    try:
        plot(result, paths["png"])
    except Exception as e:  # noqa: BLE001 - a plot is a view of the JSON; losing it must not end the run
        log.warning("could not draw %s (%s: %s); the results are in %s", paths["png"], type(e).__name__, e,
                    paths["json"])
        del paths["png"]
    return paths


def _f(v: Any, fmt: str = ".1f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _util(r: dict[str, Any]) -> tuple[str, str]:
    """NVDEC and GPU-busy percentages (mean / max) of a GPU row, "-" elsewhere."""
    u = r.get("utilization")
    if not u:
        return "-", "-"
    cells = []
    for k in ("nvdec", "gpu"):
        mean, peak = u.get(f"{k}_mean"), u.get(f"{k}_max")
        cells.append("no samples" if mean is None else f"{mean:.0f} / {peak:.0f}")
    return cells[0], cells[1]


def _halves(r: dict[str, Any], key: str) -> str:
    a, b = r["halves"][key]
    return f"{a:.1f} / {b:.1f}"


def _describe(d: dict[str, Any]) -> str:
    return (f"{d['videos']} videos, {', '.join(d['sizes'])}, {', '.join(d['codecs'])}, "
            f"{_f(d['bits_per_s'] and d['bits_per_s'] / 1e3, '.0f')} kbit/s, "
            f"GOP {_f(d['gop_frames_mean'], '.0f')} frames (mean; max {_f(d['gop_frames_max'], '.0f')})"
            + (" (generated)" if d.get("generated") else f" ({d.get('root')})"))


def markdown(result: dict[str, Any]) -> str:
    m, s, d = result["machine"], result["settings"], result["data"]
    quick = s["window"]["quick"]
    lines = [f"# bsp-dali bench ({result['device']}, {result['date']})", ""]
    if quick:
        lines += ["**Quick run: a shortened timing window, not a steady-state measurement; do not quote these "
                  "figures.**", ""]
    lines += [f"Machine: {m.get('cpu')} ({m.get('cpu_cores')} cores), GPU: {m.get('gpu') or 'none'}"
              + (f", driver {m.get('nvidia_driver')}, CUDA runtime {m.get('cuda_runtime')}" if m.get("gpu") else ""),
              f"Versions: python {m.get('python')}, torch {m.get('torch')}, PyAV {m.get('pyav')}, DALI {m.get('dali')}, "
              f"CuPy {m.get('cupy')}, numpy {m.get('numpy')}", "",
              f"Timing: {s['window']['describe']}; rates are delivered quantity / wall time over the window; "
              "halves = rate over the first and second half of the window's batches; spread = |difference| / rate.",
              "",
              f"Data: {_describe(d)}",
              *[f"Data set '{name}': {_describe(other)}" for name, other in result.get("data_sets", {}).items()
                if other is not d], "",
              f"Settings: `{json.dumps({k: v for k, v in s.items() if k != 'window'})}`", "",
              "## Decode ceilings (hardware, not this project's code)", "",
              "| ceiling | data | decoder | decoded frames/s | halves | spread | NVDEC % mean / max | GPU % mean / max |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r.get("ceiling"):
            if "error" in r:
                lines.append(f"| {r['row']} | {r.get('data_set', '')} | failed: {r['error']} | | | | | |")
                continue
            nvdec, gpu = _util(r)
            lines.append(f"| {r['row']} | {r.get('data_set', '')} | {r['decoder']} | {r['decoded_frames_per_s']:.0f} | "
                         f"{_halves(r, 'decoded_frames_per_s')} | {r['spread']:.3f} | {nvdec} | {gpu} |")
    lines += ["", "## Loaders (delivered batches)", "",
              "| row | data | decoder | T | size | batch | threads/workers | clips/s | halves | spread | "
              "decoded frames/clip | decoded frames/s | / ceiling | NVDEC % | GPU % |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["row"] in ("pipeline", "baseline"):
            nvdec, gpu = _util(r)
            lines.append(f"| {r['row']} | {r.get('data_set', '')} | {r['decoder']} | {r['T']} | {r['size']} | "
                         f"{r['batch']} | {r['threads']} | "
                         f"{r['clips_per_s']:.2f} | {_halves(r, 'clips_per_s')} | {r['spread']:.3f} | "
                         f"{r['decoded_frames_per_clip']:.1f} | {r['decoded_frames_per_s']:.0f} | "
                         f"{_f(r.get('fraction_of_ceiling'), '.3f')} ({r.get('ceiling_row', '-')}) | "
                         f"{nvdec} | {gpu} |")
    lines += ["", "Decoded frames/clip: what a seeking decoder decodes to deliver the clips, from the keyframe "
              "tables (the keyframe at or before each window through its end). The pipeline's CPU workers skip "
              "frames nothing references before each window (exactly: the frames they return are a full "
              "decode's), so they decode fewer than this count and their fraction of the ceiling can exceed 1. "
              "`pyav-tuned` is a reference baseline: PyAV converting to RGB on the worker's own thread, the one "
              "PyAV setting the pipeline changes; goals compare with the plain `pyav` loop."]
    lines += ["", "| kernel | traffic | GB/s | copy GB/s | fraction of copy |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["row"] == "kernel":
            lines.append(f"| {r['decoder']} (batch {r['batch']}, T {r['T']}, {r['size']}x{r['size']}) | "
                         f"{r['traffic_bytes'] / 1e6:.1f} MB | {r['GBps']:.2f} | {r['copy_GBps']:.2f} | "
                         f"{r['fraction_of_copy']:.3f} |")
    lines += ["", "| training step | static batch s/step | fed by pipeline s/step | stall fraction | "
              "data-wait fraction | host wait fraction | GPU % mean / max |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["row"] == "train-step":
            gpu = _util(r)[1]
            lines.append(f"| {r['decoder']} batch {r['batch']} {r['size']}x{r['size']} T {r['T']} | "
                         f"{r['static_seconds']:.3f} | {r['fed_seconds']:.3f} | {r['stall_fraction']:.3f} | "
                         f"{r['data_wait_fraction']:.3f} | {r['host_wait_fraction']:.3f} | {gpu} |")
    lines += ["", "## Goals", "", "| goal | target | measured | met |", "|---|---|---|---|"]
    for g in result["goals"]:
        v = "n/a" if g["measured"] is None else f"{g['measured']:.3f}"
        lines.append(f"| {g['goal']} | {'<' if g['lower_is_better'] else '>='} {g['target']} | {v} | "
                     f"{'yes' if g['met'] else 'no'} |")
    prof = result["cpu_stage_profile"]
    total = sum(prof.values()) or 1.0
    lines += ["", "## Where the time goes (CPU stages run one after the other, seconds per batch; a profile, "
              "not a throughput)", ""]
    lines += [f"- {k}: {v:.3f} s ({100 * v / total:.0f}%)" for k, v in prof.items()]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Decoded frames/s of the pipeline and the PyAV baseline per batch size (first T and size, most
    threads), with the decode ceilings as lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install 'bsp-dali[bench]')")
        return
    s = result["settings"]
    T0, S0, n = s["frames"][0], s["sizes"][0], s["threads"][-1]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    kinds = ("pipeline", "baseline")
    Bs = s["batch_sizes"]
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        vals = [next((r["decoded_frames_per_s"] for r in result["rows"] if r["row"] == kind and r["T"] == T0
                      and r["size"] == S0 and r["batch"] == B and r["threads"] == n
                      and r.get("data_set", "as given") == "as given"
                      and (kind != "baseline" or r["decoder"].startswith("pyav in "))), 0) for B in Bs]
        ax.bar([i + k * width for i in range(len(Bs))], vals, width, label=kind)
    for r, style in ((r, ":" if r["row"].startswith("cpu") else "--") for r in result["rows"]
                     if r.get("ceiling") and "decoded_frames_per_s" in r
                     and r.get("data_set", "as given") == "as given"):
        ax.axhline(r["decoded_frames_per_s"], color="k", linestyle=style, linewidth=1, label=r["row"])
    ax.set_xticks([i + width / 2 for i in range(len(Bs))], [str(b) for b in Bs])
    ax.set_xlabel("batch size")
    ax.set_ylabel("decoded frames / s")
    m = result["machine"]
    quick = " (quick: not steady state)" if s["window"]["quick"] else ""
    ax.set_title(f"{result['device']}: {m.get('gpu') or m.get('cpu')} | T={T0}, {S0}x{S0}, {n} threads{quick}",
                 fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
