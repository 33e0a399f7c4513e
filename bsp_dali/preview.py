"""``bsp-dali preview``: render a few synthesized samples so a person can see what the encoder sees.

Writes, into the output folder:

* ``samples.jsonl``: one recipe object per sample (BSP-METHOD.md's format);
* ``clips/<index:06d>.npy``: uint8 ``(T, H, W, 3)`` synthesized frames before normalisation;
* ``grid.png``: one row per sample, frames as columns (the paper's Fig. 2 style); blended frames
  are framed in orange, frames after the boundary (``i >= mu``) are underlined in red, and each row
  is captioned with its type and parameters.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from .index import VideoInfo
from .planner import Planner, SamplePlan, plans_summary
from .synthesis import Layout, OutDType, RecipeTables, synthesize

BLEND_COLOUR = (255, 140, 0)
AFTER_COLOUR = (220, 30, 30)


class FrameReader(Protocol):
    def read(self, video: VideoInfo, frames: Sequence[int]) -> np.ndarray:  # FHWC uint8
        ...


def render_batch(plans: Sequence[SamplePlan], reader: FrameReader, index_videos: Sequence[VideoInfo],
                 device: str = "cpu") -> np.ndarray:
    """Decode the plans' frames and synthesize them as uint8 previews: (N, T, H, W, 3)."""
    stacks = [reader.read(index_videos[src.video], frames)
              for plan in plans for src, frames in zip(plan.sources, plan.frames)]
    tables = RecipeTables.from_plans(plans)
    if device == "gpu":
        from .gpu import import_cupy

        cp = import_cupy()
        out = synthesize([cp.asarray(s) for s in stacks], tables, dtype=OutDType.UINT8, layout=Layout.NTCHW)
        ntchw = cp.asnumpy(out)
    else:
        ntchw = synthesize(stacks, tables, dtype=OutDType.UINT8, layout=Layout.NTCHW)
    return np.ascontiguousarray(ntchw.transpose(0, 1, 3, 4, 2))  # (N, T, C, H, W) -> (N, T, H, W, C)


def caption(plan: SamplePlan) -> str:
    parts = [f"#{plan.index} {plan.type.key} (label {plan.label})"]
    if plan.eps is not None:
        parts.append(f"eps={plan.eps}")
    if plan.gamma is not None:
        parts.append(f"gamma={plan.gamma:g} t={plan.t}")
    if plan.mu is not None:
        parts.append(f"mu={plan.mu}")
    parts.append(" + ".join(s.class_name for s in plan.sources))
    return "  ".join(parts)


def make_grid(clips: np.ndarray, plans: Sequence[SamplePlan], scale: int = 1) -> Any:
    """A PIL image: one row per sample, captioned, frames marked (see module docstring)."""
    from PIL import Image, ImageDraw

    N, T, H, W, _ = clips.shape
    h, w = H * scale, W * scale
    pad, cap = 4, 14
    img = Image.new("RGB", (pad + T * (w + pad), N * (cap + h + 2 * pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for n, plan in enumerate(plans):
        y0 = pad + n * (cap + h + 2 * pad)
        draw.text((pad, y0), caption(plan), fill=(0, 0, 0))
        for t in range(T):
            x0, yt = pad + t * (w + pad), y0 + cap
            frame = Image.fromarray(clips[n, t])
            if scale != 1:
                frame = frame.resize((w, h), Image.NEAREST)
            img.paste(frame, (x0, yt))
            if len(plan.recipe[t]) > 1:
                draw.rectangle([x0 - 2, yt - 2, x0 + w + 1, yt + h + 1], outline=BLEND_COLOUR, width=2)
            if plan.mu is not None and t >= plan.mu:
                draw.line([x0, yt + h + 3, x0 + w - 1, yt + h + 3], fill=AFTER_COLOUR, width=3)
    return img


def write_preview(out_dir: str | os.PathLike, planner: Planner, reader: FrameReader, num: int,
                  epoch: int = 0, device: str = "cpu", batch_size: int = 8,
                  progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Plan ``num`` samples, render them and write the preview files. Returns a summary."""
    if num < 1:
        raise ValueError(f"num ({num}) must be >= 1")
    out = Path(out_dir)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    plans = planner.plan_many(range(num), epoch=epoch)
    clips_all = []
    jsonl_tmp = out / "samples.jsonl.tmp"
    with open(jsonl_tmp, "w") as fh:
        for start in range(0, num, batch_size):
            batch = plans[start:start + batch_size]
            clips = render_batch(batch, reader, planner.index.videos, device=device)
            for plan, clip in zip(batch, clips):
                np.save(out / "clips" / f"{plan.index:06d}.npy", clip)
                fh.write(json.dumps(plan.to_json()) + "\n")
            clips_all.append(clips)
            if progress:
                progress(len(batch))
    os.replace(jsonl_tmp, out / "samples.jsonl")
    clips = np.concatenate(clips_all)
    scale = max(1, 96 // clips.shape[2])
    make_grid(clips, plans, scale=scale).save(out / "grid.png")
    return {"out": str(out), "num": num, "types": plans_summary(plans), "frame_size": list(clips.shape[2:4])}
