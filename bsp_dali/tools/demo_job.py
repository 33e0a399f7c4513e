"""``bsp-dali demo``: the whole product on built-in data, in a few minutes on a laptop CPU.

1. write a small data set of procedurally animated action classes as real H.264 files;
2. index it (``bsp-dali index``);
3. pre-train a TSM-ResNet-18 on the 4-way boundary task (``bsp-dali train``), GPU if present;
4. measure 4-way boundary accuracy on clips synthesized from held-out videos;
5. write the preview grid, the checkpoint and a short report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from ..data.demo import DEMO_CLASSES, write_demo_videos
from ..data.index import split_train_val
from ..data.ingest import index_data
from ..plan.augment import SpatialConfig, SpatialMode
from ..plan.config import SynthesisConfig
from ..train.config import TrainConfig
from ..train.loop import processes_per_node, train
from .preview import write_preview

log = logging.getLogger(__name__)


def demo_train_config(data: Path, out: Path, minutes: float, size: int, gpus: int | None) -> TrainConfig:
    """Settings sized for the demo. The paper's recipe (SGD from ImageNet weights, days on
    Kinetics) does not transfer to minutes from scratch on a CPU: the demo uses AdamW at 1e-3
    (lr 0.004 per 64 clips, batch 16), 32x32 crops of 60-100% of the frame, a short cosine
    schedule (15 epochs of 320 clips) and validates once, at the end."""
    return TrainConfig(
        data=str(data), out=str(out), task="bsp", arch="resnet18", epochs=15, batch_size=16, optimizer="adamw",
        lr=0.004, warmup_epochs=1.0, size=size, crop_scale=(0.6, 1.0), epoch_size=320, val_fraction=0.25,
        val_clips=256, val_every=1000, checkpoint_every=40, log_every=20, max_minutes=minutes, gpus=gpus,
        dropout=0.2, synthesis=SynthesisConfig(gammas=(0.5, 2.0, 3.0)))


def run_demo(out: str | Path = "demo-out", minutes: float = 7.0, size: int = 32, classes: int = 4,
             per_class: int = 12, gpus: int | None = None, val_clips: int = 256,
             progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; every argument is checked before the first video is written."""
    out = Path(out)
    t0 = time.time()
    data = out / "data"
    if not (2 <= classes <= len(DEMO_CLASSES)):
        raise ValueError(f"classes ({classes}) must be in 2..{len(DEMO_CLASSES)}")
    if per_class < 4:
        raise ValueError(f"per_class ({per_class}) must be >= 4 (a quarter of each class is held out)")
    if not minutes > 0:  # also TrainConfig's max_minutes rule, named here as the demo's argument
        raise ValueError(f"minutes ({minutes}) must be > 0")
    # the training settings (size, GPUs, val_clips) are TrainConfig's to check
    cfg = dataclasses.replace(demo_train_config(data, out / "run", minutes, size, gpus), val_clips=val_clips)
    processes_per_node(cfg)  # --gpus beyond the usable devices
    total = classes * per_class
    done = 0

    def step(_: int) -> None:
        nonlocal done
        done += 1
        if progress:
            progress("writing demo videos", done, total)

    write_demo_videos(data, num_classes=classes, per_class=per_class, size=(64, 64), progress=step)
    report = index_data(data, min_frames=8)
    index = report.index
    summary = train(cfg)
    val = summary.get("validation", {})
    # the preview grid, from held-out videos, as the encoder saw them in validation
    _, val_index = split_train_val(index, cfg.val_fraction, cfg.seed)
    write_preview(out / "preview", val_index, 8, synthesis=cfg.synthesis, seed=cfg.seed + 1,
                  spatial=SpatialConfig(size=(64, 64), mode=SpatialMode.RESIZE), device="cpu")
    acc = val.get("val_accuracy")
    result = {
        "boundary_accuracy": acc, "chance": 1.0 / cfg.synthesis.num_classes, "val_clips": val.get("val_clips"),
        "confusion": val.get("confusion"), "labels": list(cfg.synthesis.label_names),
        "steps": summary.get("step"), "train_minutes": summary.get("minutes"), "total_minutes": (time.time() - t0) / 60,
        "videos": len(index), "classes": list(index.classes),
        "files": {"checkpoint": summary.get("checkpoint"), "preview": str(out / "preview" / "grid.png"),
                  "metrics": str(out / "run" / "metrics.jsonl"), "report": str(out / "report.md")},
    }
    (out / "report.json").write_text(json.dumps(result, indent=1))
    (out / "report.md").write_text(_report_md(result))
    return result


def _report_md(r: dict[str, Any]) -> str:
    acc = r["boundary_accuracy"]
    lines = ["# bsp-dali demo", "",
             f"TSM-ResNet-18 pre-trained for {r['steps']} steps ({r['train_minutes']:.1f} min) on {r['videos']} "
             f"procedural videos of {len(r['classes'])} classes.", "",
             f"4-way boundary accuracy on {r['val_clips']} clips from held-out videos: "
             f"**{100 * acc:.1f}%** (chance {100 * r['chance']:.0f}%)." if acc is not None else
             "No validation result.", "", "Confusion matrix (rows: true, columns: predicted):", "",
             "| | " + " | ".join(r["labels"]) + " |", "|---" * (len(r["labels"]) + 1) + "|"]
    for name, row in zip(r["labels"], r["confusion"] or []):  # no rows without validation
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "Files:", ""] + [f"- {k}: `{v}`" for k, v in r["files"].items()]
    return "\n".join(lines) + "\n"
