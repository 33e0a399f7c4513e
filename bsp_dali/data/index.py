"""The dataset index: which videos exist, their class, length and size; and :class:`BadVideo`,
a file that cannot be used.

This is the first stage of the data flow (index -> planner -> decode -> synthesis -> iterator).
The planner reads only this; it never opens a video file. ``bsp-dali index`` fills it from disk;
tests and the demo build it from lists.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

MANIFEST_VERSION = 1


def read_json(path: str | Path, what: str) -> Any:
    """The JSON value in the file ``path``: FileNotFoundError when it is missing, ValueError when it
    is not JSON, each naming ``what`` (``"manifest"``, ``"config file"``) and the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None
    except UnicodeDecodeError:  # a video or other binary file
        raise ValueError(f"{what} {path} is not valid JSON: it is not text") from None


def write_json(path: str | Path, data: Any, **dumps: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically: a temporary file beside it, then a rename, so
    a reader sees the old file or the new one; a failed write leaves no temporary file behind.
    ``dumps``: keyword arguments of :func:`json.dumps` (``indent``, ``separators``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, **dumps))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` is a write that failed for want of space (a full disk or a quota)."""
    return isinstance(e, OSError) and e.errno in NO_SPACE


def looks_like_manifest(data: Any) -> bool:
    """Whether a JSON value has a manifest's shape (an object with version, videos and classes)."""
    return isinstance(data, Mapping) and {"version", "videos", "classes"} <= set(data)


class UnwritablePath(ValueError):
    """An output path that cannot be written (named with the option and the reason): raised by
    :func:`ensure_writable_dir` / :func:`ensure_writable_file` before a command does any work."""


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create the output folder ``path`` (and its parents) if needed and check that a file can be
    written in it; returns it as a Path. Raises :class:`UnwritablePath` naming ``what`` (the
    option, e.g. ``"--out"``), the path and the reason (a parent is a file, read-only, ...)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UnwritablePath(f"{what} {p} cannot be written: it is a file, not a folder")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UnwritablePath(f"{what} {p} cannot be written: {parent} is a file, not a folder")
            break
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UnwritablePath(f"{what} {p} cannot be written: cannot create the folder: {_reason(e)}") from None
    _try_create(p, p, what)
    return p


def _try_create(folder: Path, p: Path, what: str) -> None:
    """Create and remove a file in ``folder``: UnwritablePath about ``p`` when that fails."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".bsp-dali-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UnwritablePath(f"{what} {p} cannot be written: cannot create a file in {folder}: {_reason(e)}") from None


def ensure_writable_file(path: str | os.PathLike, what: str) -> Path:
    """Check, creating nothing, that the output file ``path`` can be written: it is no folder, and
    a file can be made in its nearest existing folder (missing folders below that are for the
    writer to create); returns it as a Path. Raises :class:`UnwritablePath` naming ``what``, the
    path and the reason."""
    p = Path(path)
    if p.is_dir():
        raise UnwritablePath(f"{what} {p} cannot be written: it is a folder")
    base = next((q for q in p.parents if q.exists()), Path("."))
    if not base.is_dir():
        raise UnwritablePath(f"{what} {p} cannot be written: {base} is a file, not a folder")
    _try_create(base, p, what)
    if p.exists() and not os.access(p, os.W_OK):
        raise UnwritablePath(f"{what} {p} cannot be written: permission denied")
    return p


class BadVideo(Exception):
    """A video file that cannot be used, with the reason in words (``path``, ``reason``;
    ``str(e)`` is ``"path: reason"``): raised when probing finds it unusable (``bsp-dali index``
    excludes it) and when decoding the frames a plan asks for fails (the decode stage bans it and
    replaces its samples)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    """One usable video. ``path`` is relative to the data root (or absolute, or a ``demo://`` URI).

    ``num_frames`` counts decodable frames in presentation order; frame indices in plans and
    recipes are 0-based positions in that order.
    """

    path: str
    label: int
    num_frames: int
    fps: float = 25.0
    width: int = 0
    height: int = 0
    codec: str | None = None
    keyframes: tuple[tuple[int, int], ...] = ()  # (frame index, pts) of some keyframes, for seeking
    file_size: int = 0  # bytes, with mtime_ns: lets `bsp-dali index` skip unchanged files
    mtime_ns: int = 0
    probe: str | None = None  # "packets" or "decode": which probe counted the frames (None: not probed)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keyframes", tuple((int(a), int(b)) for a, b in self.keyframes))
        if not self.path:
            raise ValueError("VideoInfo.path is empty")
        if int(self.num_frames) < 1:
            raise ValueError(f"{self.path}: num_frames ({self.num_frames}) must be >= 1")
        if int(self.label) < 0:
            raise ValueError(f"{self.path}: label ({self.label}) must be >= 0")
        if not (self.fps > 0):
            raise ValueError(f"{self.path}: fps ({self.fps}) must be > 0")

    def frames_to_decode(self, first: int, last: int) -> int:
        """Frames a seeking decoder decodes to return frames ``first..last`` (inclusive): from the
        last recorded keyframe at or before ``first`` (frame 0 when none is recorded) through
        ``last``. The decode cost of a window, computed from the keyframe table alone."""
        if not (0 <= first <= last < self.num_frames):
            raise ValueError(f"{self.path}: frames {first}..{last} outside 0..{self.num_frames - 1}")
        start = max((k for k, _ in self.keyframes if k <= first), default=0)
        return last - start + 1


class DatasetIndex:
    """Videos plus the class map (class index -> class name).

    Class indices are positions in ``classes``, which is sorted by name when built from names,
    so the same folder gives the same labels on every machine.
    """

    def __init__(self, videos: Sequence[VideoInfo], classes: Sequence[str], root: str | None = None,
                 excluded: Sequence[Mapping[str, Any]] = ()):
        self.videos: tuple[VideoInfo, ...] = tuple(videos)
        self.classes: tuple[str, ...] = tuple(classes)
        self.root = root
        # files found but unusable: {"path", "reason", ...}; kept so re-indexing can skip them
        self.excluded: list[dict[str, Any]] = [dict(e) for e in excluded]
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("class names must be unique")
        for v in self.videos:
            if v.label >= len(self.classes):
                raise ValueError(
                    f"{v.path}: label {v.label} has no class name (only {len(self.classes)} classes)"
                )
        paths = [v.path for v in self.videos]
        if len(set(paths)) != len(paths):
            seen: set[str] = set()
            dup = next(p for p in paths if p in seen or seen.add(p))  # type: ignore[func-returns-value]
            raise ValueError(f"video {dup!r} is listed twice")
        # Dense arrays for the planner's hot path.
        self.num_frames = np.array([v.num_frames for v in self.videos], dtype=np.int64)
        self.labels = np.array([v.label for v in self.videos], dtype=np.int64)
        self._by_class = tuple(
            np.flatnonzero(self.labels == c).astype(np.int64) for c in range(len(self.classes))
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_lists(
        cls,
        paths: Sequence[str],
        class_names: Sequence[str],
        num_frames: Sequence[int],
        fps: Sequence[float] | float = 25.0,
        sizes: Sequence[tuple[int, int]] | None = None,
        root: str | None = None,
    ) -> "DatasetIndex":
        """Build from parallel lists; ``sizes`` are (width, height). Classes are sorted by name."""
        if not (len(paths) == len(class_names) == len(num_frames)):
            raise ValueError(
                f"paths ({len(paths)}), class_names ({len(class_names)}) and num_frames "
                f"({len(num_frames)}) must have the same length"
            )
        classes = sorted(set(class_names))
        label = {c: i for i, c in enumerate(classes)}
        fps_list = [float(fps)] * len(paths) if isinstance(fps, (int, float)) else list(fps)
        size_list = list(sizes) if sizes is not None else [(0, 0)] * len(paths)
        videos = [
            VideoInfo(p, label[c], int(n), float(f), int(s[0]), int(s[1]))
            for p, c, n, f, s in zip(paths, class_names, num_frames, fps_list, size_list)
        ]
        return cls(videos, classes, root=root)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> VideoInfo:
        return self.videos[i]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def videos_of_class(self, c: int) -> np.ndarray:
        """Indices (into ``videos``) of the videos of class ``c``, ascending."""
        return self._by_class[c]

    def class_name(self, c: int) -> str:
        return self.classes[c]

    def resolve(self, path: str) -> str:
        """Absolute location of a video path (paths in the index are root-relative)."""
        if self.root is None or os.path.isabs(path) or "://" in path:
            return path
        return os.path.join(self.root, path)

    # ------------------------------------------------------------------ manifest file
    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "root": self.root,
            "classes": list(self.classes),
            "videos": [asdict(v) for v in self.videos],
            "excluded": self.excluded,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "DatasetIndex":
        if not looks_like_manifest(data):
            raise ValueError("not a bsp-dali manifest (a JSON object with version, videos and classes)")
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(
                f"manifest version {data.get('version')!r} is not supported (expected {MANIFEST_VERSION})"
            )
        videos = [VideoInfo(**v) for v in data["videos"]]
        return cls(videos, data["classes"], root=data.get("root"), excluded=data.get("excluded", ()))

    def save(self, path: str | Path) -> None:
        """Write the manifest atomically (temporary file, then rename; a failed write leaves no
        temporary file behind)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.to_json(), separators=(",", ":"))

    @classmethod
    def load(cls, path: str | Path) -> "DatasetIndex":
        return cls.from_json(read_json(path, "manifest"))

    def subset(self, keep: Iterable[int]) -> "DatasetIndex":
        """A new index with the chosen videos and the same class map."""
        return DatasetIndex([self.videos[i] for i in keep], self.classes, root=self.root,
                            excluded=self.excluded)


def split_train_val(index: DatasetIndex, fraction: float, seed: int = 0) -> tuple[DatasetIndex, DatasetIndex]:
    """Hold out about ``fraction`` of each class's videos (at least one when a class has three or
    more), chosen by a hash of the path so that the split never changes when files are added.
    Returns (train, held-out) indexes with the same class map: the trainer's validation split, the
    demo's and ``bsp-dali inspect``'s held-out videos."""
    train, val = [], []
    for c in range(index.num_classes):
        members = index.videos_of_class(c).tolist()
        keyed = sorted(members, key=lambda v: zlib.crc32(f"{seed}:{index.videos[v].path}".encode()))
        k = int(round(len(members) * fraction))
        if k == 0 and len(members) >= 3:
            k = 1
        val += keyed[:k]
        train += keyed[k:]
    return index.subset(sorted(train)), index.subset(sorted(val))


__all__ = ["BadVideo", "DatasetIndex", "NO_SPACE", "UnwritablePath", "VideoInfo", "MANIFEST_VERSION", "ensure_writable_dir",
           "ensure_writable_file", "is_disk_full", "looks_like_manifest", "read_json", "split_train_val", "write_json"]
