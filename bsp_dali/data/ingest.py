"""Building a :class:`DatasetIndex` from files on disk (``bsp-dali index``).

Three ways to say which videos belong to the data set:

* the Kinetics folder layout ``[split/]<class>/<youtube_id>_<start:06d>_<end:06d>.mp4`` (any video
  file whose parent folder names its class);
* the official annotation CSV (``label,youtube_id,time_start,time_end,split``), resolved against
  the data root;
* a list file of ``path label`` lines (paths relative to the root, or absolute).

Every file is probed in parallel worker processes, by its packets (``ProbeMode.PACKETS``, the
default: demuxing only, fast enough for Kinetics' 240k files) or by decoding it in full
(``ProbeMode.DECODE``: also names files whose payload does not decode); see ``probe.py`` for what
each catches. Unusable files are excluded with their reason and never stop the others. Probing is
incremental: a file whose size and modification time match the previous manifest is not probed
again, unless the previous probe was by packets and this one asks for decoding.
"""

from __future__ import annotations

import csv
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .index import (BadVideo, DatasetIndex, VideoInfo, ensure_writable_file, is_disk_full, looks_like_manifest,
                    read_json)
from .probe import ProbeMode, probe as probe_file

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ogv", ".3gp")
MANIFEST_NAME = "bsp-dali-manifest.json"
# Keep recorded keyframes at least this many frames apart: all-intra codecs mark every frame, and
# the manifest holds one entry per kept keyframe. 8 keeps every keyframe of a `bsp-dali transcode`
# output (GOP 16 by default), so readers seek to the nearest one.
KEYFRAME_SPACING = 8


class IngestError(ValueError):
    """The input as a whole is unusable (missing root, unreadable list, nothing usable left)."""


@dataclass
class Entry:
    """A file the input names, with its class; ``missing`` when listed but not on disk."""

    path: str  # relative to the root (or absolute)
    class_name: str
    missing: bool = False


@dataclass
class IngestReport:
    index: DatasetIndex
    found: int
    reused: int
    probed: int
    excluded: list[dict[str, Any]] = field(default_factory=list)
    probe: str = ProbeMode.PACKETS.value
    decoded_instead: list[dict[str, str]] = field(default_factory=list)  # packet probes that decoded, and why

    def reasons(self) -> dict[str, int]:
        """Excluded files counted by the first word of their reason (``truncated``...)."""
        out: dict[str, int] = {}
        for e in self.excluded:
            key = e["reason"].split(":")[0].split(" (")[0]
            out[key] = out.get(key, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {"root": self.index.root, "found": self.found, "usable": len(self.index),
                "classes": len(self.index.classes), "reused": self.reused, "probed": self.probed,
                "probe": self.probe, "decoded_instead": self.decoded_instead,
                "excluded": self.excluded, "excluded_by_reason": self.reasons()}


# ---------------------------------------------------------------------------------- discovery
def is_video_name(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith(".")


def discover(root: str | os.PathLike, *, annotations: str | os.PathLike | None = None,
             list_file: str | os.PathLike | None = None, split: str | None = None) -> list[Entry]:
    """The entries of one of the three input forms (what ``bsp-dali index`` and ``transcode`` read)."""
    root_p = Path(root)
    if not root_p.exists():
        raise IngestError(f"data root {root_p} does not exist")
    if not root_p.is_dir():
        raise IngestError(f"data root {root_p} is not a folder")
    if annotations is not None and list_file is not None:
        raise IngestError("give either --annotations or --list, not both")
    if annotations is not None:
        entries = discover_csv(root_p, Path(annotations), split)
    elif list_file is not None:
        entries = discover_list(root_p, Path(list_file))
    else:
        entries = discover_folder(root_p, split)
    if not entries:
        raise IngestError(f"no video files found under {root_p}" + (f" (split {split!r})" if split else ""))
    return entries


def discover_folder(root: Path, split: str | None = None) -> list[Entry]:
    """Video files under ``root`` (or ``root/split``), each labelled by its parent folder."""
    base = root / split if split else root
    if not base.is_dir():
        raise IngestError(f"{base} is not a folder")
    entries = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(filenames):
            if not is_video_name(name):
                continue
            full = Path(dirpath) / name
            if full.parent == base:
                log.debug("skipping %s: a video directly in %s has no class folder", full, base)
                continue
            entries.append(Entry(str(full.relative_to(root)), full.parent.name))
    return entries


def discover_csv(root: Path, csv_path: Path, split: str | None = None) -> list[Entry]:
    """Entries of the Kinetics annotation CSV; listed files not on disk are marked missing."""
    if not csv_path.is_file():
        raise IngestError(f"annotation file {csv_path} does not exist")
    entries = []
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"label", "youtube_id", "time_start", "time_end"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise IngestError(f"{csv_path} is not a Kinetics annotation CSV: it needs columns {sorted(need)}, "
                              f"has {reader.fieldnames}")
        for row in reader:
            row_split = row.get("split") or ""
            if split and row_split != split:
                continue
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except ValueError:
                raise IngestError(f"{csv_path}: bad time in row {row}") from None
            stem = f"{row['youtube_id']}_{start:06d}_{end:06d}"
            found = None
            for folder in ([row_split] if row_split else []) + [""]:
                for ext in VIDEO_EXTENSIONS:
                    rel = os.path.join(folder, row["label"], stem + ext)
                    if (root / rel).is_file():
                        found = rel
                        break
                if found:
                    break
            rel = found or os.path.join(row_split, row["label"], stem + ".mp4")
            entries.append(Entry(rel, row["label"], missing=found is None))
    return entries


def discover_list(root: Path, list_path: Path) -> list[Entry]:
    """Entries of a ``path label`` list file (the label is the last field; paths may hold spaces)."""
    if not list_path.is_file():
        raise IngestError(f"list file {list_path} does not exist")
    entries = []
    for lineno, line in enumerate(list_path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise IngestError(f"{list_path}:{lineno}: expected 'path label', got {line!r}")
        path, label = parts
        full = Path(path) if os.path.isabs(path) else root / path
        entries.append(Entry(path, label, missing=not full.is_file()))
    return entries


# ---------------------------------------------------------------------------------- probing
def _covers(have: str | None, want: ProbeMode) -> bool:
    """Whether an earlier probe result of kind ``have`` may stand in for a ``want`` probe now
    (manifests without the field, ``None``, predate packet probing: they were decoded)."""
    return want is ProbeMode.PACKETS or have in (None, ProbeMode.DECODE.value)


def _probe_one(full: str, min_frames: int, mode: ProbeMode = ProbeMode.PACKETS) -> tuple[str, Any]:
    """Worker: ('ok', fields) or ('bad', reason). Runs in a separate process."""
    try:
        import av

        av.logging.set_level(None)  # FFmpeg's own console messages: the reason is reported instead
    except Exception:  # noqa: BLE001
        pass
    try:
        r = probe_file(full, mode, min_frames=min_frames)
    except BadVideo as e:
        return "bad", e.reason
    except Exception as e:  # noqa: BLE001 - a probe must never take the whole index down
        return "bad", f"undecodable: {type(e).__name__}: {e}"
    kept: list[tuple[int, int]] = []
    for idx, pts in r.keyframes:
        if not kept or idx - kept[-1][0] >= KEYFRAME_SPACING:
            kept.append((idx, pts))
    return "ok", {"num_frames": r.num_frames, "fps": r.fps, "width": r.width, "height": r.height,
                  "codec": r.codec, "keyframes": kept, "probe": r.method, "_note": r.note}


def build_index(root: str | os.PathLike, entries: Sequence[Entry], *, min_frames: int = 1,
                previous: DatasetIndex | None = None, workers: int | None = None,
                progress: Callable[[int], None] | None = None,
                probe: ProbeMode | str = ProbeMode.PACKETS) -> IngestReport:
    """Probe ``entries`` with ``probe`` (reusing ``previous`` results for unchanged files) into an index."""
    mode = ProbeMode.parse(probe)
    root = Path(root).resolve()
    decoded_instead: list[dict[str, str]] = []
    old = {v.path: v for v in previous.videos} if previous is not None else {}
    old_bad = {e["path"]: e for e in previous.excluded} if previous is not None else {}
    seen: set[str] = set()
    ok: dict[str, tuple[str, dict[str, Any]]] = {}  # path -> (class, fields)
    excluded: list[dict[str, Any]] = []
    todo: list[tuple[Entry, str, int, int]] = []
    reused = 0
    for e in entries:
        if e.path in seen:
            continue
        seen.add(e.path)
        full = e.path if os.path.isabs(e.path) else str(root / e.path)
        if e.missing or not os.path.exists(full):
            excluded.append({"path": e.path, "class": e.class_name, "reason": "missing: listed but not on disk"})
            continue
        st = os.stat(full)
        prev = old.get(e.path)
        if (prev is not None and prev.file_size == st.st_size and prev.mtime_ns == st.st_mtime_ns
                and _covers(prev.probe, mode)):
            if prev.num_frames >= min_frames:
                ok[e.path] = (e.class_name, {k: getattr(prev, k) for k in
                                             ("num_frames", "fps", "width", "height", "codec", "keyframes",
                                              "file_size", "mtime_ns", "probe")})
            else:
                excluded.append({"path": e.path, "class": e.class_name, "file_size": st.st_size,
                                 "mtime_ns": st.st_mtime_ns, "probe": prev.probe,
                                 "reason": f"too few frames: {prev.num_frames} < {min_frames} needed by the clip settings"})
            reused += 1
            if progress:
                progress(1)
            continue
        bad = old_bad.get(e.path)
        if (bad is not None and bad.get("file_size") == st.st_size and bad.get("mtime_ns") == st.st_mtime_ns
                and not bad["reason"].startswith("too few frames") and _covers(bad.get("probe"), mode)):
            excluded.append(dict(bad, **{"class": e.class_name}))
            reused += 1
            if progress:
                progress(1)
            continue
        todo.append((e, full, st.st_size, st.st_mtime_ns))

    def record(e: Entry, size: int, mtime: int, status: str, payload: Any) -> None:
        if status == "ok":
            note = payload.pop("_note", "")
            if note:
                decoded_instead.append({"path": e.path, "why": note})
                log.info("%s: %s", e.path, note)
            ok[e.path] = (e.class_name, dict(payload, file_size=size, mtime_ns=mtime))
        else:
            excluded.append({"path": e.path, "class": e.class_name, "reason": payload,
                             "file_size": size, "mtime_ns": mtime, "probe": mode.value})
        if progress:
            progress(1)

    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    if workers == 1 or len(todo) <= 1:
        for e, full, size, mtime in todo:
            record(e, size, mtime, *_probe_one(full, min_frames, mode))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_probe_one, full, min_frames, mode): (e, size, mtime)
                       for e, full, size, mtime in todo}
            for fut in as_completed(futures):
                e, size, mtime = futures[fut]
                try:
                    status, payload = fut.result()
                except Exception as exc:  # noqa: BLE001 - a crashed worker marks only its file
                    status, payload = "bad", f"undecodable: the probe crashed ({type(exc).__name__})"
                record(e, size, mtime, status, payload)

    # Deterministic output: classes sorted by name, videos in the input's order.
    classes = sorted({cls for cls, _ in ok.values()})
    label = {c: i for i, c in enumerate(classes)}
    videos = []
    for e in entries:
        if e.path in ok:
            cls, fields = ok.pop(e.path)
            videos.append(VideoInfo(path=e.path, label=label[cls], **fields))
    excluded.sort(key=lambda x: x["path"])
    index = DatasetIndex(videos, classes, root=str(root), excluded=excluded)
    decoded_instead.sort(key=lambda x: x["path"])
    return IngestReport(index, found=len(seen), reused=reused, probed=len(todo), excluded=excluded,
                        probe=mode.value, decoded_instead=decoded_instead)


def index_data(root: str | os.PathLike, *, annotations: str | os.PathLike | None = None,
               list_file: str | os.PathLike | None = None, split: str | None = None,
               min_frames: int = 1, manifest: str | os.PathLike | None = None, workers: int | None = None,
               progress_total: Callable[[int], None] | None = None,
               progress: Callable[[int], None] | None = None,
               probe: ProbeMode | str = ProbeMode.PACKETS) -> IngestReport:
    """Discover, probe (``probe``: by packets or by decoding) and write the manifest (atomically). Raises :class:`IngestError` when the
    input is unusable as a whole or nothing usable is left, and
    :class:`~bsp_dali.data.index.UnwritablePath` (before probing) when the manifest cannot be
    written; the manifest is written either way when at least one video is usable."""
    mode = ProbeMode.parse(probe)
    root_p = Path(root)
    entries = discover(root_p, annotations=annotations, list_file=list_file, split=split)
    manifest_p = Path(manifest) if manifest is not None else root_p / MANIFEST_NAME
    ensure_writable_file(manifest_p, "manifest")  # before any file is probed
    previous = None
    if manifest_p.is_file():
        try:
            previous = DatasetIndex.load(manifest_p)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable previous manifest %s: %s", manifest_p, e)
    if progress_total:
        progress_total(len(entries))
    report = build_index(root_p, entries, min_frames=min_frames, previous=previous, workers=workers,
                         progress=progress, probe=mode)
    if len(report.index) == 0:
        raise IngestError(f"no usable video under {root_p}: all {report.found} files were excluded "
                          f"({', '.join(f'{k}: {v}' for k, v in sorted(report.reasons().items()))})")
    try:
        report.index.save(manifest_p)
    except OSError as e:
        if is_disk_full(e):  # a full disk stays an OSError (its own exit status)
            raise
        raise IngestError(f"manifest {manifest_p} cannot be written ({e.strerror or e})") from None
    return report


NOT_A_MANIFEST = "is not a bsp-dali manifest (JSON); give a folder indexed with `bsp-dali index`, or its manifest"


def load_manifest(path: str | os.PathLike) -> DatasetIndex:
    """The index in the manifest file ``path``. Raises :class:`IngestError` naming the file when it
    is not a bsp-dali manifest (a video, other binary or text, a JSON that is no manifest), and
    when the root folder it records is gone: then the manifest's own folder is used if its videos
    are there (the data set was moved with its manifest), else the error says to index again."""
    p = Path(path)
    index = _read_manifest(p)
    if index.root is not None and not Path(index.root).is_dir():
        here = p.resolve().parent
        relative = [v.path for v in index.videos if not os.path.isabs(v.path) and "://" not in v.path]
        if relative and all((here / path).is_file() for path in relative[:20]):
            log.info("manifest root %s does not exist; using the manifest's folder %s, where its videos are",
                     index.root, here)
            index.root = str(here)
        else:
            raise IngestError(f"manifest root {index.root} does not exist (folder moved? run bsp-dali index again)")
    return index


def _read_manifest(p: Path) -> DatasetIndex:
    """The index in the manifest file ``p`` as written (IngestError naming the file otherwise)."""
    if not p.is_file():
        raise IngestError(f"{p} does not exist" if not p.exists() else f"{p} {NOT_A_MANIFEST}")
    try:
        data = read_json(p, "manifest")
    except (OSError, ValueError):
        raise IngestError(f"{p} {NOT_A_MANIFEST}") from None
    if not looks_like_manifest(data):
        raise IngestError(f"{p} {NOT_A_MANIFEST}")
    try:
        return DatasetIndex.from_json(data)
    except (ValueError, KeyError, TypeError) as e:
        raise IngestError(f"manifest {p}: {e}") from None


def load_data(data: str | os.PathLike) -> DatasetIndex:
    """A manifest file (see :func:`load_manifest`), or a folder holding ``bsp-dali-manifest.json``."""
    p = Path(data)
    if p.is_dir():
        if not (p / MANIFEST_NAME).is_file():
            raise IngestError(f"{p} has no {MANIFEST_NAME}; run `bsp-dali index {p}` first")
        index = _read_manifest(p / MANIFEST_NAME)
        index.root = str(p.resolve())  # the folder wins, so a moved data set keeps working
        return index
    if not p.exists():
        raise IngestError(f"{p} does not exist")
    return load_manifest(p)


__all__ = ["Entry", "IngestError", "IngestReport", "MANIFEST_NAME", "build_index", "discover", "discover_csv",
           "discover_folder", "discover_list", "index_data", "load_data", "load_manifest"]
