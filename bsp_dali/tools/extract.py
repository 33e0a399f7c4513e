"""``bsp-dali extract``: snippet features of untrimmed videos for temporal localization models.

Each video is cut into snippets of ``snippet`` consecutive frames starting at frames
``0, stride, 2*stride, ...`` for every start inside the video, so

    num_snippets = ceil(num_frames / stride)

and a snippet that runs past the last frame repeats the last frame (the tail of a video is never
dropped). Every snippet goes through each encoder in eval mode (centre crop, ImageNet
normalisation); its feature is the encoder's clip feature before the classifier, and the features
of several checkpoints are concatenated in the order given (the paper's two-stream feature).

Per video this gives a float32 ``[num_snippets, C]`` array, written as

* ``hdf5``: one file, one dataset per video id (G-TAD's input);
* ``csv``: ``<out>/<video id>.csv``, rescaled by linear interpolation to ``rescale`` temporal points
  (BSN-style; header ``f0,f1,...``, one row per point);
* ``npy``: ``<out>/<video id>.npy``.

The video id is the file name without its extension. Work is kept per video under
``<out>.parts/``, written atomically: a rerun skips finished videos, and a bad video is reported and
skipped, never fatal. ``<out>.parts/settings.json`` records what the features depend on: each
checkpoint's SHA-256 (in order), the snippet length, the stride and the crop size. A rerun with
other values (or a retrained checkpoint) extracts every video again; the format and ``rescale``
only shape the output, which is assembled from the parts on every run.

The output records the same settings (HDF5: the file's attribute ``bsp_dali_extract``; csv/npy:
``<out>/bsp-dali-extract.json``). An existing ``--out`` that is not such an output (another file, a
folder for HDF5, a file for csv/npy, a non-empty folder of other files) is refused before any work.
When no video could be extracted, nothing is written and ``<out>.parts/`` is removed.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import json
import logging
import shutil
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..data.index import DatasetIndex, ensure_writable_dir, write_json
from ..data.ingest import (MANIFEST_NAME, Entry, IngestError, build_index, discover_list, is_video_name, load_data,
                           load_manifest)
from ..gpu import autocast as autocast_for
from ..plan.augment import SpatialConfig, SpatialMode
from ..plan.config import SynthesisConfig
from ..plan.planner import plain_plan

log = logging.getLogger(__name__)

FORMATS = ("hdf5", "csv", "npy")
SETTINGS_NAME = "settings.json"  # in <out>.parts/
FOLDER_MARKER = "bsp-dali-extract.json"  # in a csv/npy output folder
H5_MARKER = "bsp_dali_extract"  # attribute of an HDF5 output: its settings as JSON


@dataclass
class ExtractReport:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already done
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    redone: str | None = None  # why earlier parts were discarded (other settings), None if kept
    snippets: int = 0
    seconds: float = 0.0


def snippet_starts(num_frames: int, stride: int) -> list[int]:
    """Start frames of the snippets of a video (the documented count rule)."""
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames ({num_frames}) and stride ({stride}) must be >= 1")
    return list(range(0, num_frames, stride))


def snippet_frames(start: int, snippet: int, num_frames: int) -> list[int]:
    return [min(start + i, num_frames - 1) for i in range(snippet)]


def rescale(features: np.ndarray, points: int) -> np.ndarray:
    """Linear interpolation of ``[n, C]`` features to ``[points, C]`` (snippet centres spread
    evenly over [0, 1])."""
    n = features.shape[0]
    if n == 1:
        return np.repeat(features, points, axis=0)
    src = np.linspace(0.0, 1.0, n)
    dst = np.linspace(0.0, 1.0, points)
    return np.stack([np.interp(dst, src, features[:, c]) for c in range(features.shape[1])], axis=1).astype(np.float32)


def discover_videos(source: str | os.PathLike) -> tuple[Path, list[Entry]]:
    """A folder (every video file under it), a list file (one path per line, optional label) or a
    manifest. Returns (root, entries)."""
    src = Path(source)
    if not src.exists():
        raise IngestError(f"{src} does not exist")
    if src.is_dir():
        if (src / MANIFEST_NAME).is_file():
            return src, [Entry(v.path, "video") for v in load_data(src).videos]
        entries = [Entry(str(p.relative_to(src)), "video") for p in sorted(src.rglob("*"))
                   if p.is_file() and is_video_name(p.name)]
        if not entries:
            raise IngestError(f"no video files found under {src}")
        return src, entries
    if src.suffix == ".json":
        index = load_manifest(src)  # names a JSON that is no manifest, finds a moved data set
        root = Path(index.root or src.parent)
        return root, [Entry(v.path, "video") for v in index.videos]
    if is_video_name(src.name):  # one video
        return src.parent, [Entry(src.name, "video")]
    try:
        text = src.read_text()
    except UnicodeDecodeError:
        raise IngestError(f"{src} is not a list file (text), a video or a bsp-dali manifest (JSON); give a folder "
                          "of videos, a list file (one path per line) or a manifest") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if lines and all(len(ln.split()) == 1 for ln in lines):  # plain paths
        root = src.parent
        return root, [Entry(ln, "video", missing=not (root / ln).is_file() and not Path(ln).is_file()) for ln in lines]
    return src.parent, discover_list(src.parent, src)


def video_id(path: str) -> str:
    return Path(path).name.rsplit(".", 1)[0]


def load_encoders(checkpoints: Sequence[str | os.PathLike], device: Any, *,
                  trust: bool = False) -> tuple[list[Any], dict[str, Any]]:
    """The encoders of the checkpoints (read weights-only unless ``trust``: see
    :func:`bsp_models.read_checkpoint`), and the first checkpoint's training config."""
    from bsp_models import encoder_from_bsp_checkpoint, load_bsp_checkpoint

    if not checkpoints:
        raise ValueError("give at least one --checkpoint")
    states = [load_bsp_checkpoint(c, trust=trust) for c in checkpoints]  # each file is read once
    return [encoder_from_bsp_checkpoint(s).to(device).eval() for s in states], states[0]["config"]


def extract(source: str | os.PathLike, checkpoints: Sequence[str | os.PathLike], out: str | os.PathLike, *,
            fmt: str = "hdf5", snippet: int | None = None, stride: int | None = None, rescale_to: int = 100,
            batch_size: int = 64, size: int | None = None, device: str = "auto", workers: int | None = None,
            threads: int | None = None, trust_checkpoint: bool = False,
            progress: Callable[[int, int, str], None] | None = None) -> ExtractReport:
    """Write snippet features of every video of ``source`` (see the module docstring)."""
    import time

    import torch

    from ..gpu import resolve_device
    from ..iterator import BSPIterator

    validate_arguments(fmt=fmt, snippet=snippet, stride=stride, rescale_to=rescale_to, batch_size=batch_size,
                       size=size, workers=workers, threads=threads)
    out = Path(out)
    check_output(out, fmt)
    if not checkpoints:
        raise ValueError("give at least one --checkpoint")
    fingerprints = [checkpoint_fingerprint(c) for c in checkpoints]
    dev = resolve_device(device)
    tdev = torch.device("cuda" if dev == "gpu" else "cpu")
    encoders, train_config = load_encoders(checkpoints, tdev, trust=trust_checkpoint)
    frames_per = {e.config.num_frames for e in encoders}
    if len(frames_per) != 1:
        raise ValueError(f"the checkpoints were trained on different clip lengths {sorted(frames_per)}")
    T = frames_per.pop()
    snippet = T if snippet is None else snippet
    if snippet != T:
        raise ValueError(f"--snippet ({snippet}) must equal the encoders' clip length ({T})")
    stride = snippet if stride is None else stride
    if size is None:
        size = int(train_config.get("size", 224))
    settings = {"checkpoints": fingerprints, "snippet": snippet, "stride": stride, "size": size}
    parts = out.with_name(out.name + ".parts")
    root, entries = discover_videos(source)
    counts = collections.Counter(video_id(e.path) for e in entries)
    dup = sorted(i for i, c in counts.items() if c > 1)
    if dup:
        raise IngestError(f"video ids must be unique (file names without extension); repeated: {dup[:5]}")
    report = ExtractReport()
    report.redone = prepare_parts(parts, settings)
    done = {e.path for e in entries if (parts / f"{video_id(e.path)}.npy").is_file()}
    todo = [e for e in entries if e.path not in done]
    report.skipped = [e.path for e in entries if e.path in done]
    t0 = time.time()
    if todo:
        probed = build_index(root, todo, min_frames=1, workers=workers)
        report.failed += [(e["path"], e["reason"]) for e in probed.excluded]
        index = probed.index
    else:
        index = DatasetIndex([], [], root=str(root))
    if len(index):
        spatial = SpatialConfig(size=(size, size), mode=SpatialMode.EVAL)
        # the renderer's own planner is unused (plans are built here); tau=1 only needs 2-frame videos
        renderer = BSPIterator(index, batch_size=1, synthesis=SynthesisConfig(tau=1, types=("same_speed",)),
                               spatial=spatial, device=dev, num_threads=threads, epoch_size=1,
                               max_bad_videos=10**9)
        autocast = autocast_for(dev)
        try:
            for k, info in enumerate(index.videos):
                vid = video_id(info.path)
                try:
                    feats = _video_features(renderer, index, k, encoders, snippet, stride, batch_size, autocast)
                except Exception as e:  # noqa: BLE001 - one bad video never stops the others
                    reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
                    log.warning("skipping %s: %s", info.path, reason)
                    report.failed.append((info.path, reason))
                    continue
                _atomic_npy(parts / f"{vid}.npy", feats)
                report.written.append(info.path)
                report.snippets += feats.shape[0]
                if progress:
                    progress(len(report.written), len(index), info.path)
        finally:
            renderer.close()
    report.seconds = time.time() - t0
    done_ids = [video_id(e.path) for e in entries if (parts / f"{video_id(e.path)}.npy").is_file()]
    if not done_ids:  # every video failed: no empty output, no parts folder left behind
        log.warning("no video could be extracted: nothing written to %s", out)
        if not any(parts.glob("*.npy")):
            shutil.rmtree(parts, ignore_errors=True)
        return report
    write_outputs(parts, done_ids, out, fmt, rescale_to, settings)
    return report


def validate_arguments(*, fmt: str, snippet: int | None, stride: int | None, rescale_to: int, batch_size: int,
                       size: int | None, workers: int | None, threads: int | None) -> None:
    """Every argument of :func:`extract` checked before any work (``None``: the default; 0 is an
    error, never read as the default)."""
    if fmt not in FORMATS:
        raise ValueError(f"format ({fmt!r}) must be one of {list(FORMATS)}")
    if not isinstance(rescale_to, int) or rescale_to < 2:
        raise ValueError(f"--rescale ({rescale_to}) must be >= 2")
    for flag, value in (("--snippet", snippet), ("--stride", stride), ("--batch-size", batch_size),
                        ("--size", size), ("--workers", workers), ("--threads", threads)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{flag} ({value!r}) must be an integer >= 1")


def check_output(out: Path, fmt: str) -> None:
    """Refuse, before any work, an ``out`` this run must not replace: for HDF5 a folder, or a file
    that is not an earlier output of this tool; for csv/npy a file, or a non-empty folder without
    this tool's marker. Also that the folder above can be created and written."""
    if fmt == "hdf5":
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder; --format hdf5 writes a file (give a file name, or "
                             f"--format csv/npy for a folder)")
        if out.exists() and not _is_h5_output(out):
            raise ValueError(f"--out {out} exists and is not an output of bsp-dali extract: not replacing it "
                             f"(remove it or choose another --out)")
    else:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; --format {fmt} writes a folder (give a folder name, or "
                             f"--format hdf5 for a file)")
        if out.is_dir() and any(out.iterdir()) and not (out / FOLDER_MARKER).is_file():
            raise ValueError(f"--out {out} is a folder of other files (no {FOLDER_MARKER}): not writing into it "
                             f"(choose another --out)")
    ensure_writable_dir(out.parent, f"the folder of --out {out.name}:")


def _is_h5_output(path: Path) -> bool:
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return H5_MARKER in f.attrs
    except Exception:  # noqa: BLE001 - not HDF5 (or unreadable): not ours
        return False


def checkpoint_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a checkpoint's weights: its SHA-256 and size (the path is recorded, not
    compared: a moved file gives the same features)."""
    p = Path(path)
    if not p.is_file():
        from bsp_models import CheckpointError

        raise CheckpointError(f"checkpoint {p} does not exist" if not p.exists() else f"checkpoint {p} is not a file")
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return {"path": str(p), "size": p.stat().st_size, "sha256": h.hexdigest()}


def settings_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between the settings parts were made with (``old``) and ``new`` (phrases);
    checkpoints compare by content, in order."""
    diffs = []
    if [c.get("sha256") for c in old.get("checkpoints", [])] != [c["sha256"] for c in new["checkpoints"]]:
        was = [c.get("path") for c in old.get("checkpoints", [])]
        diffs.append(f"checkpoints {was} (now {[c['path'] for c in new['checkpoints']]}; or their contents changed)")
    diffs += [f"{k} {old.get(k)} (now {new[k]})" for k in ("snippet", "stride", "size") if old.get(k) != new[k]]
    return diffs


def prepare_parts(parts: Path, settings: dict[str, Any]) -> str | None:
    """Create ``parts`` with ``settings.json``; when it holds parts made with other settings (or
    with no record of them), discard them. Returns why they were discarded (None when kept)."""
    record = parts / SETTINGS_NAME
    why = None
    if parts.is_dir() and any(parts.glob("*.npy")):
        try:
            old = json.loads(record.read_text())
            why = "; ".join(settings_differences(old, settings)) or None
        except (OSError, ValueError, AttributeError, TypeError, KeyError):
            why = f"{record} is missing or unreadable"
        if why:
            log.warning("%s holds features made with other settings (%s): extracting every video again", parts, why)
            for f in parts.glob("*.npy"):
                f.unlink()
    try:
        parts.mkdir(parents=True, exist_ok=True)
        write_json(record, settings, indent=1)
    except OSError as e:
        raise ValueError(f"cannot write {record}: {e.strerror or e}") from None
    return why


def _video_features(renderer: Any, index: DatasetIndex, k: int, encoders: list[Any], snippet: int, stride: int,
                    batch_size: int, autocast: Callable[[], Any]) -> np.ndarray:
    import torch

    n = index.videos[k].num_frames
    starts = snippet_starts(n, stride)
    box = _eval_box(renderer, index, k)
    out = []
    for b in range(0, len(starts), batch_size):
        plans = [plain_plan(index, k, snippet_frames(s, snippet, n), sample_index=i, crop=box)
                 for i, s in enumerate(starts[b:b + batch_size], start=b)]
        batch = renderer.to_torch(renderer.render(plans))
        with torch.no_grad(), autocast():
            feats = torch.cat([e.clip_features(batch["video"]).float() for e in encoders], dim=1)
        out.append(feats.cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _eval_box(renderer: Any, index: DatasetIndex, k: int) -> tuple[float, float, float, float]:
    from ..plan.augment import draw

    info = index.videos[k]
    return draw(np.random.default_rng(0), renderer.spatial, info.width, info.height)[0]


def _atomic_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def write_outputs(parts: Path, ids: Sequence[str], out: Path, fmt: str, rescale_to: int,
                  settings: dict[str, Any] | None = None) -> None:
    """Assemble the per-video parts into the requested format (atomically for HDF5), recording
    ``settings`` and the format in it."""
    record = json.dumps({**(settings or {}), "format": fmt, **({"rescale": rescale_to} if fmt == "csv" else {})})
    if fmt == "hdf5":
        import h5py

        tmp = out.with_name(out.name + ".tmp")
        out.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp, "w") as f:
            f.attrs[H5_MARKER] = record
            for vid in ids:
                f.create_dataset(vid, data=np.load(parts / f"{vid}.npy"))
        os.replace(tmp, out)
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / FOLDER_MARKER).write_text(record)
    for vid in ids:
        feats = np.load(parts / f"{vid}.npy")
        if fmt == "npy":
            _atomic_npy(out / f"{vid}.npy", feats)
        else:
            pts = rescale(feats, rescale_to)
            tmp = out / f".{vid}.csv.tmp"
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow([f"f{c}" for c in range(pts.shape[1])])
                w.writerows([[f"{v:.6g}" for v in row] for row in pts])
            os.replace(tmp, out / f"{vid}.csv")

