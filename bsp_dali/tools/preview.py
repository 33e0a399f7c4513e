"""``bsp-dali preview``: render a few synthesized samples so a person can see what the encoder sees.

The samples go through the real pipeline (planner, decoder, spatial transform, synthesis kernel)
with a uint8 output instead of the normalised one. Writes, into the output folder:

* ``samples.jsonl``: one recipe object per sample (BSP-METHOD.md's format);
* ``clips/<index:06d>.npy``: uint8 ``(T, H, W, 3)``, the synthesized frames after the spatial
  transform, before normalisation (and ``clips/<index:06d>.gif`` with ``gif=True``);
* ``grid.png``: one row per sample, frames as columns (the paper's Fig. 2 style); blended frames
  are framed in orange, frames after the boundary (``i >= mu``) are underlined in red, and each row
  is captioned with its type and parameters.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..data.index import DatasetIndex, ensure_writable_dir
from ..decode.stage import Decoder
from ..plan.augment import SpatialConfig
from ..plan.config import SynthesisConfig
from ..plan.planner import SamplePlan, plans_summary

BLEND_COLOUR = (255, 140, 0)
AFTER_COLOUR = (220, 30, 30)


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
    img = Image.new("RGB", (max(pad + T * (w + pad), 360), N * (cap + h + 2 * pad) + pad), (255, 255, 255))
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


def write_preview(out_dir: str | os.PathLike, index: DatasetIndex, num: int, *,
                  synthesis: SynthesisConfig | None = None, spatial: SpatialConfig | None = None, seed: int = 0,
                  epoch: int = 0, device: str = "cpu", decoder: Decoder | str = Decoder.AUTO, batch_size: int = 8,
                  gif: bool = False, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Synthesize samples ``0..num-1`` of ``epoch`` and write the preview files (``out_dir`` is
    checked writable first: :class:`~bsp_dali.data.index.UnwritablePath`). Returns a summary."""
    from ..iterator import BSPIterator

    if num < 1:
        raise ValueError(f"num ({num}) must be >= 1")
    decoder = Decoder.parse(decoder)  # before anything is written
    out = ensure_writable_dir(out_dir, "--out")  # before any video is decoded
    (out / "clips").mkdir(parents=True, exist_ok=True)
    it = BSPIterator(index, batch_size=min(batch_size, num), synthesis=synthesis, spatial=spatial, seed=seed,
                     epoch_size=num, device=device, decoder=decoder, dtype="uint8", layout="NTCHW",
                     last_batch_policy="partial", shard=(0, 1))
    it.set_epoch(epoch)
    plans: list[SamplePlan] = []
    clips_all = []
    jsonl_tmp = out / "samples.jsonl.tmp"
    try:
        with open(jsonl_tmp, "w") as fh:
            for raw in it.iter_raw():
                video = raw.video if isinstance(raw.video, np.ndarray) else raw.video.get()
                clips = np.ascontiguousarray(video.transpose(0, 1, 3, 4, 2))  # (N,T,C,H,W) -> (N,T,H,W,C)
                for plan, clip in zip(raw.plans, clips):
                    np.save(out / "clips" / f"{plan.index:06d}.npy", clip)
                    if gif:
                        _save_gif(out / "clips" / f"{plan.index:06d}.gif", clip)
                    fh.write(json.dumps(plan.to_json()) + "\n")
                plans.extend(raw.plans)
                clips_all.append(clips)
                if progress:
                    progress(len(raw.plans))
    finally:
        it.close()
    os.replace(jsonl_tmp, out / "samples.jsonl")
    clips = np.concatenate(clips_all)
    scale = max(1, 96 // clips.shape[2])
    make_grid(clips, plans, scale=scale).save(out / "grid.png")
    return {"out": str(out), "num": num, "types": plans_summary(plans), "frame_size": list(clips.shape[2:4]),
            "failures": it.failures, "device": it.device, "decoder": it.decoder_description}


def _save_gif(path: Path, clip: np.ndarray) -> None:
    from PIL import Image

    frames = [Image.fromarray(f) for f in clip]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=160, loop=0)
