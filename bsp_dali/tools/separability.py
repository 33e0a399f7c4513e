"""``bsp-dali inspect``: the paper's Fig. 4 as a tool — are an encoder's features boundary-sensitive?

Pairs of consecutive ``T``-frame snippets are synthesized from (held-out) videos:

* boundary pair: a diff_class clip (A blending into B at ``tau``) and the ``T`` frames of B that
  follow it: the boundary lies in the first snippet only, as in the paper's figure;
* non-boundary pair: two consecutive snippets of one video.

For each encoder the absolute differences of the two snippets' clip features are compared: the
histogram of their per-pair mean for both kinds of pair goes into a PNG, and the separability
score is the ROC AUC of the difference norm ``||f1 - f2||`` (boundary pairs positive): 0.5 means
the features do not see boundaries at all, 1.0 that every boundary pair differs more than every
non-boundary pair. Printed and saved as JSON.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.index import BadVideo, DatasetIndex, ensure_writable_dir
from ..gpu import autocast as autocast_for
from ..plan.augment import SpatialConfig, SpatialMode
from ..plan.config import BoundaryType, SynthesisConfig
from ..plan.planner import Planner, SamplePlan, plain_plan

log = logging.getLogger(__name__)


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half): the
    area under the ROC curve, by the Mann-Whitney statistic."""
    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("roc_auc needs at least one positive and one negative score")
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def make_pairs(index: DatasetIndex, T: int, pairs: int, seed: int) -> tuple[list[tuple[SamplePlan, SamplePlan]],
                                                                             list[tuple[SamplePlan, SamplePlan]]]:
    """(boundary pairs, non-boundary pairs), up to ``pairs`` of each, deterministic from ``seed``."""
    tau = T // 2
    boundary: list[tuple[SamplePlan, SamplePlan]] = []
    plain: list[tuple[SamplePlan, SamplePlan]] = []
    dc = Planner(index, SynthesisConfig(tau=tau, eps_range=(1, min(2, tau)), types=(BoundaryType.DIFF_CLASS,)), seed=seed)
    ss = Planner(index, SynthesisConfig(tau=tau, types=(BoundaryType.SAME_SPEED,)), seed=seed)
    i = 0
    while len(boundary) < pairs and i < pairs * 20:
        p = dc.plan(i)
        b_video = p.sources[1].video
        last_b = p.recipe[-1][-1][1]
        if last_b + T < index.videos[b_video].num_frames:
            boundary.append((p, plain_plan(index, b_video, list(range(last_b + 1, last_b + 1 + T)), sample_index=i)))
        i += 1
    i = 0
    while len(plain) < pairs and i < pairs * 20:
        q = ss.plan(i)
        v, s0 = q.sources[0].video, q.recipe[0][0][1]
        if s0 + 2 * T <= index.videos[v].num_frames:
            plain.append((q, plain_plan(index, v, list(range(s0 + T, s0 + 2 * T)), sample_index=i)))
        i += 1
    if not boundary or not plain:
        raise ValueError(f"the videos are too short for pairs of {T}-frame snippets")
    return boundary, plain


MAX_BAD_VIDEOS = 32  # videos that may fail to decode before inspect gives up


def inspect(data: DatasetIndex, encoders: Sequence[tuple[str, Any]], out: str | os.PathLike, *, pairs: int = 200,
            seed: int = 0, size: int = 64, device: str = "cpu", batch_size: int = 16) -> dict[str, Any]:
    """Separability of each (name, encoder) on ``data``; writes ``separability.png`` and
    ``separability.json`` into ``out`` (checked writable before any work).

    A video that fails to decode (it changed after indexing) is excluded with a warning naming it
    and its reason, and the pairs are drawn again from the videos left (as training and ``preview``
    do); a :class:`ValueError` says so when too few usable videos remain. Encoder names must be
    unique."""
    import torch

    names = [name for name, _ in encoders]
    if not encoders:
        raise ValueError("give at least one encoder")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"encoder name {dup[0]!r} is given more than once; name them apart (NAME=PATH)")
    out = ensure_writable_dir(out, "--out")
    T = encoders[0][1].config.num_frames
    if any(e.config.num_frames != T for _, e in encoders):
        raise ValueError("all encoders must take clips of the same length")
    if len(data) == 0:
        raise ValueError("the data set has no videos to inspect")
    tdev = torch.device("cuda" if device == "gpu" else "cpu")
    banned: dict[str, str] = {}  # path (as in the index) -> reason
    while True:
        usable = data.subset([i for i, v in enumerate(data.videos) if v.path not in banned])
        try:
            if len(usable) == 0:
                raise ValueError("no video is left")
            boundary, plain = make_pairs(usable, T, pairs, seed)
        except ValueError as e:
            if not banned:
                raise
            raise ValueError(f"too few usable videos for inspect after excluding {len(banned)} that failed to "
                             f"decode ({', '.join(sorted(banned))}): {e}") from None
        try:
            result, diffs = _score(usable, encoders, boundary, plain, T, seed, size, device, tdev, batch_size)
            break
        except BadVideo as e:
            path = _index_path(usable, e.path)
            if path is None or path in banned:
                raise ValueError(f"inspect: {e}") from None
            log.warning("excluding %s from inspect: %s", usable.resolve(path), e.reason)
            banned[path] = e.reason
            if len(banned) > MAX_BAD_VIDEOS:
                raise ValueError(f"{len(banned)} videos failed to decode (more than {MAX_BAD_VIDEOS}); "
                                 f"first: {next(iter(banned))}: {next(iter(banned.values()))}") from None
    result["excluded"] = [{"path": p, "reason": r} for p, r in banned.items()]
    (out / "separability.json").write_text(json.dumps(result, indent=1))
    _plot(diffs, result, out / "separability.png")
    return result


def _index_path(index: DatasetIndex, failed: str) -> str | None:
    """The index's path of the video a :class:`BadVideo` names (readers give the resolved path)."""
    for v in index.videos:
        if failed in (v.path, index.resolve(v.path)):
            return v.path
    return None


def _score(data: DatasetIndex, encoders: Sequence[tuple[str, Any]], boundary: list[tuple[SamplePlan, SamplePlan]],
           plain: list[tuple[SamplePlan, SamplePlan]], T: int, seed: int, size: int, device: str, tdev: Any,
           batch_size: int) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(result, per-pair mean differences) of every encoder on the pairs; raises :class:`BadVideo`
    for a file that fails to decode."""
    import torch

    from ..iterator import BSPIterator

    renderer = BSPIterator(data, batch_size=1, synthesis=SynthesisConfig(tau=1, types=("same_speed",)),
                           spatial=SpatialConfig(size=(size, size), mode=SpatialMode.RESIZE), device=device,
                           epoch_size=1)
    autocast = autocast_for(device)

    def features(plans: list[SamplePlan], enc: Any) -> np.ndarray:
        out_f = []
        for b in range(0, len(plans), batch_size):
            video = renderer.to_torch(renderer.render(plans[b:b + batch_size]))["video"]
            with torch.no_grad(), autocast():
                out_f.append(enc.clip_features(video).float().cpu().numpy())
        return np.concatenate(out_f)

    result: dict[str, Any] = {"pairs": {"boundary": len(boundary), "non_boundary": len(plain)}, "T": T,
                              "seed": seed, "encoders": {}}
    diffs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        for name, enc in encoders:
            enc = enc.to(tdev).eval()
            per_kind = []
            for kind in (boundary, plain):
                f1 = features([a for a, _ in kind], enc)
                f2 = features([b for _, b in kind], enc)
                per_kind.append(np.abs(f1 - f2))
            pos, neg = (np.linalg.norm(d, axis=1) for d in per_kind)
            result["encoders"][name] = {
                "separability_auc": roc_auc(pos, neg),
                "mean_abs_diff_boundary": float(per_kind[0].mean()),
                "mean_abs_diff_non_boundary": float(per_kind[1].mean()),
                # the scored distances, so that the AUC can be checked from the file
                "distances": {"boundary": pos.tolist(), "non_boundary": neg.tolist()},
            }
            diffs[name] = (per_kind[0].mean(1), per_kind[1].mean(1))
    finally:
        renderer.close()
    return result, diffs


def _plot(diffs: dict[str, tuple[np.ndarray, np.ndarray]], result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install 'bsp-dali[bench]')")
        return
    fig, axes = plt.subplots(1, len(diffs), figsize=(4 * len(diffs), 3), squeeze=False)
    for ax, (name, (pos, neg)) in zip(axes[0], diffs.items()):
        hi = float(max(pos.max(), neg.max())) or 1.0
        bins = np.linspace(0, hi, 30)
        ax.hist(neg, bins=bins, alpha=0.6, label="no boundary", density=True)
        ax.hist(pos, bins=bins, alpha=0.6, label="boundary in 1st snippet", density=True)
        ax.set_title(f"{name}: AUC {result['encoders'][name]['separability_auc']:.3f}", fontsize=9)
        ax.set_xlabel("mean |f1 - f2| of a snippet pair", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
