"""``bsp-dali transcode``: re-encode a data set once for fast random access.

Kinetics as downloaded is H.264 with keyframes seconds apart, so a random 8-frame clip costs about
130 decoded frames. This module re-encodes every video of a data set to H.264 with a short GOP
(``--gop 16``), no B-frames, the short side scaled to 256 (aspect kept, even dimensions) and a
constant frame rate, so that a clip costs at most ``gop - 1`` extra frames. docs/transcode.md says
when that pays off and how to run it on Kinetics, HMDB and UCF.

Inputs are what ``bsp-dali index`` reads (``ingest.discover``: Kinetics folders, annotation CSV,
list file) or a :class:`DatasetIndex`. The output mirrors the input's layout under DST (every file
becomes ``<same path>.mp4``); a list file is rewritten to point at the outputs, an annotation CSV is
copied unchanged (it names no paths). Frame ``i`` of an output is frame ``i`` of its source, for
every ``i``: the frame count and order are kept, only the timestamps are rewritten to a constant
rate (a variable-rate source gets its average rate, and the report says so).

Running: one video per worker process; a video is written under a temporary name (``.NAME.part.mp4``
in its DST folder, which ``bsp-dali index`` ignores) and renamed when complete, so an interrupted
run leaves only finished outputs. A rerun skips an output whose embedded provenance (source size,
frame count, settings) matches, whose packet count equals the source's frame count, and whose last
frame decodes. A failing video is reported with its reason and never stops the others; a full disk
(``ENOSPC``) removes the partial output and stops the run (:class:`DiskFull`), keeping what was
finished.
"""

from __future__ import annotations

import enum
import errno
import json
import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

from .index import DatasetIndex, UnwritablePath, ensure_writable_dir, is_disk_full, write_json
from .ingest import Entry, IngestError, discover

log = logging.getLogger(__name__)

REPORT_NAME = "bsp-dali-transcode.report.json"
PROVENANCE_KEY = "comment"  # MP4 metadata tag holding the provenance JSON (the mov muxer keeps it)
PROVENANCE_VERSION = 1
AUDIO_COPY = ("aac", "mp3", "ac3", "eac3", "alac", "opus")  # audio codecs an MP4 takes as they are


class TranscodeError(ValueError):
    """The input or the settings as a whole are unusable (bad option, missing root, no encoder)."""


class DiskFull(OSError):
    """The run stopped because the output disk is full; ``report`` holds what was finished."""

    def __init__(self, message: str, report: "TranscodeReport"):
        super().__init__(errno.ENOSPC, message)
        self.message = message
        self.report = report

    def __str__(self) -> str:
        return self.message


class Encoder(str, enum.Enum):
    """Which H.264 encoder: ``auto`` takes NVENC where PyAV can open it, else libx264."""

    AUTO = "auto"
    LIBX264 = "libx264"
    NVENC = "h264_nvenc"


@dataclass(frozen=True)
class TranscodeSettings:
    """How outputs are encoded. ``short_side`` is ignored when ``keep_size`` is set."""

    gop: int = 16  # frames from one keyframe to the next (exact: no scene-cut keyframes)
    bframes: int = 0
    short_side: int = 256
    keep_size: bool = False
    crf: int = 23  # libx264 constant rate factor; NVENC's constant-quality target (-cq)
    preset: str = "veryfast"  # libx264 preset (NVENC uses p4): a training cache, not an archive
    keep_audio: bool = False
    encoder: Encoder = Encoder.AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder", _parse_encoder(self.encoder))
        if not (isinstance(self.gop, int) and self.gop >= 1):
            raise TranscodeError(f"--gop ({self.gop}) must be an integer >= 1")
        if not (isinstance(self.bframes, int) and 0 <= self.bframes <= 16):
            raise TranscodeError(f"--bframes ({self.bframes}) must be an integer in 0..16")
        if not (isinstance(self.short_side, int) and self.short_side >= 2):
            raise TranscodeError(f"--short-side ({self.short_side}) must be an integer >= 2")
        if not (isinstance(self.crf, int) and 0 <= self.crf <= 51):
            raise TranscodeError(f"--crf ({self.crf}) must be an integer in 0..51")
        presets = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
        if self.preset not in presets:
            raise TranscodeError(f"--preset ({self.preset!r}) must be one of {', '.join(presets)}")

    def output_key(self) -> dict[str, Any]:
        """The settings an output's content depends on (a rerun with others re-encodes); the
        encoder and preset change speed, not structure, so finished outputs survive a change of them."""
        return {"gop": self.gop, "bframes": self.bframes, "size": "keep" if self.keep_size else self.short_side,
                "crf": self.crf, "audio": self.keep_audio}

    def to_json(self) -> dict[str, Any]:
        return dict(asdict(self), encoder=self.encoder.value)


def _parse_encoder(value: "Encoder | str") -> Encoder:
    try:
        return Encoder(value)
    except ValueError:
        raise TranscodeError(f"--encoder ({value!r}) must be one of {', '.join(e.value for e in Encoder)}") from None


def output_size(width: int, height: int, settings: TranscodeSettings) -> tuple[int, int]:
    """(width, height) of the output: short side ``settings.short_side`` (rounded to even) with the
    aspect kept (the long side to the nearest even number), or the source size (``keep_size``, an
    odd side rounded down to even); 4:2:0 needs even sides."""
    if width < 1 or height < 1:
        raise ValueError(f"frame size ({width}x{height}) must be positive")
    if settings.keep_size:  # an odd side loses one pixel (scaled, not cropped)
        return max(2, width - width % 2), max(2, height - height % 2)
    if height <= width:
        h, w = settings.short_side, width * settings.short_side / height
    else:
        w, h = settings.short_side, height * settings.short_side / width
    return max(2, int(w / 2 + 0.5) * 2), max(2, int(h / 2 + 0.5) * 2)  # nearest even, halves up


# ---------------------------------------------------------------------------------- encoders
def nvenc_status() -> tuple[bool, str]:
    """Whether PyAV can open h264_nvenc here, and if not, why (in words)."""
    try:
        import av
    except ImportError as e:
        return False, f"PyAV is not installed ({e})"
    if Encoder.NVENC.value not in av.codecs_available:
        return False, "this PyAV build has no h264_nvenc encoder"
    try:
        ctx = av.CodecContext.create(Encoder.NVENC.value, "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
        ctx.time_base, ctx.framerate = Fraction(1, 25), Fraction(25)
        ctx.open()
    except Exception as e:  # noqa: BLE001 - FFmpeg reports a missing driver or GPU in many ways
        return False, f"h264_nvenc cannot be opened (no NVIDIA GPU with NVENC and driver?): {_short(e)}"
    return True, "h264_nvenc opens"


def resolve_encoder(choice: Encoder | str) -> tuple[str, str]:
    """(encoder name, message): ``auto`` falls back to libx264 with a message when NVENC is not
    usable; an explicit ``h264_nvenc`` without it, or a PyAV without libx264, is a TranscodeError."""
    choice = _parse_encoder(choice)
    import av

    if choice is not Encoder.LIBX264:
        ok, why = nvenc_status()
        if ok:
            return Encoder.NVENC.value, "encoding with h264_nvenc (NVENC)"
        if choice is Encoder.NVENC:
            raise TranscodeError(f"--encoder h264_nvenc is not usable here: {why}")
        note = f"{why}; encoding with libx264 on the CPU"
    else:
        note = "encoding with libx264 on the CPU"
    if Encoder.LIBX264.value not in av.codecs_available:
        raise TranscodeError("this PyAV build has no libx264 encoder (install PyAV from PyPI, whose wheels carry it)")
    return Encoder.LIBX264.value, note


# ---------------------------------------------------------------------------------- report
@dataclass
class VideoResult:
    """One video: ``status`` is done (written now), skipped (finished by an earlier run), failed,
    or not_started (the run stopped on a full disk first)."""

    src: str  # as the input names it (relative to SRC, or absolute)
    dst: str  # relative to DST
    class_name: str
    status: str
    reason: str = ""
    frames_in: int = 0
    frames_out: int = 0
    size_in: int = 0
    size_out: int = 0
    seconds: float = 0.0
    fps_in: float = 0.0
    fps_out: float = 0.0
    vfr: bool = False  # the source had a variable frame rate (converted to fps_out, its average)
    width_out: int = 0
    height_out: int = 0


@dataclass
class TranscodeReport:
    src: str
    dst: str
    settings: dict[str, Any]
    encoder: str
    encoder_note: str
    layout: str  # folder, csv, list or index
    videos: list[VideoResult] = field(default_factory=list)
    seconds: float = 0.0
    written_list: str | None = None  # the rewritten list file / copied annotation CSV in DST
    stopped: str = ""  # why the run stopped early (a full disk), else ""

    def by_status(self, status: str) -> list[VideoResult]:
        return [v for v in self.videos if v.status == status]

    @property
    def failed(self) -> list[VideoResult]:
        return self.by_status("failed")

    def summary(self) -> dict[str, Any]:
        done, skipped = self.by_status("done"), self.by_status("skipped")
        ok = done + skipped
        size_in = sum(v.size_in for v in ok)
        size_out = sum(v.size_out for v in ok)
        return {"videos": len(self.videos), "done": len(done), "skipped": len(skipped), "failed": len(self.failed),
                "not_started": len(self.by_status("not_started")), "vfr_converted": sum(v.vfr for v in done),
                "frames": sum(v.frames_out for v in ok), "size_in": size_in, "size_out": size_out,
                "size_ratio": (size_out / size_in) if size_in else None, "seconds": self.seconds,
                "videos_per_second": (len(done) / self.seconds) if self.seconds > 0 else None}

    def to_json(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "layout": self.layout, "settings": self.settings,
                "encoder": self.encoder, "encoder_note": self.encoder_note, "written_list": self.written_list,
                "stopped": self.stopped, "summary": self.summary(), "videos": [asdict(v) for v in self.videos]}

    def entries(self) -> list[Entry]:
        """The finished outputs as ``ingest`` entries relative to DST, in input order: what
        ``ingest.build_index(dst, report.entries())`` indexes (the class names are kept as given)."""
        return [Entry(v.dst, v.class_name) for v in self.videos if v.status in ("done", "skipped")]


# ---------------------------------------------------------------------------------- one video (worker)
def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as e:  # noqa: PERF203
        log.warning("could not remove the partial output %s: %s", path, e)


def _timing(path: str) -> tuple[Fraction, bool, int]:
    """(output rate, variable rate?, frames by packets) from the source's packet timestamps.

    Constant rate: the stream's base rate when it agrees with the timestamps (so 30000/1001 stays
    exact in a millisecond time base), else the mean. Variable rate (spacing differing by more than
    timestamp rounding): the average, (frames - 1) / (last pts - first pts)."""
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        pts = sorted(int(p.pts) for p in c.demux(s) if p.size and p.pts is not None and not p.is_discard)
        base = s.base_rate or s.average_rate or s.guessed_rate
        tb = s.time_base
    n = len(pts)
    if n < 2 or tb is None:
        return (Fraction(base) if base else Fraction(25)), False, n
    deltas = [b - a for a, b in zip(pts, pts[1:])]
    span = Fraction(pts[-1] - pts[0]) * tb
    if span <= 0:
        return (Fraction(base) if base else Fraction(25)), False, n
    mean_rate = Fraction(n - 1) / span
    spread = max(deltas) - min(deltas)
    vfr = spread > 2 and spread > 0.01 * (sum(deltas) / len(deltas))
    if not vfr and base and abs(float(base) / float(mean_rate) - 1) < 0.01:
        return Fraction(base), False, n
    return mean_rate.limit_denominator(1001), vfr, n


def _open_output(tmp: str, encoder: str, rate: Fraction, size: tuple[int, int], settings: TranscodeSettings,
                 threads: int, provenance: dict[str, Any]) -> tuple[Any, Any]:
    import av

    out = av.open(tmp, mode="w", format="mp4")
    out.metadata[PROVENANCE_KEY] = json.dumps(provenance, sort_keys=True, separators=(",", ":"))
    stream = out.add_stream(encoder, rate=rate)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.gop_size = settings.gop
    if encoder == Encoder.NVENC.value:  # never run in this project's tests (no NVENC here): unverified
        stream.options = {"preset": "p4", "rc": "vbr", "cq": str(settings.crf), "b": "0", "bf": str(settings.bframes),
                          "g": str(settings.gop), "no-scenecut": "1", "strict_gop": "1", "forced-idr": "1"}
    else:
        stream.options = {"crf": str(settings.crf), "preset": settings.preset, "bf": str(settings.bframes),
                          "threads": str(threads),
                          "x264-params": f"keyint={settings.gop}:min-keyint={settings.gop}:scenecut=0:open-gop=0"}
    stream.codec_context.time_base = 1 / rate
    return out, stream


def _mux(container: Any, packets: Any) -> int:
    """Write packets; returns how many (tests replace this to simulate a full disk)."""
    n = 0
    for p in packets:
        container.mux(p)
        n += 1
    return n


def read_provenance(path: str | os.PathLike) -> dict[str, Any] | None:
    """The provenance a transcode embedded in ``path`` (None when there is none)."""
    import av

    with av.open(str(path)) as c:
        text = c.metadata.get(PROVENANCE_KEY)
    try:
        data = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and data.get("bsp_dali_transcode") == PROVENANCE_VERSION else None


def check_output(path: str | os.PathLike, provenance: dict[str, Any]) -> str:
    """'' when ``path`` is a finished output for ``provenance``, else why not. Checks the embedded
    provenance, the frame count (packets) and that the last GOP decodes through the last frame."""
    import av

    path = str(path)
    try:
        have = read_provenance(path)
        if have is None:
            return "no transcode provenance in the file"
        for key in ("source_size", "frames", "settings"):
            if have.get(key) != provenance.get(key):
                return f"made from another source or with other settings ({key} differs)"
        with av.open(path) as c:
            s = c.streams.video[0]
            pts, keys = [], []
            for p in c.demux(s):
                if p.size and p.pts is not None:
                    pts.append(int(p.pts))
                    keys.append(bool(p.is_keyframe))
        if len(pts) != provenance["frames"]:
            return f"{len(pts)} frames, the source has {provenance['frames']}"
        order = sorted(pts)
        last_key = max(pts[i] for i in range(len(pts)) if keys[i])
        tail = len(order) - order.index(last_key)
        with av.open(path) as c:
            s = c.streams.video[0]
            c.seek(last_key, stream=s, backward=True, any_frame=False)
            got = [f.pts for f in c.decode(s)]
        if not got or got[0] != last_key or got[-1] != order[-1] or len(got) != tail:
            return "the last frames do not decode"
    except Exception as e:  # noqa: BLE001 - an unreadable output is simply not finished
        return f"unreadable ({_short(e)})"
    return ""


def transcode_one(src: str, dst: str, settings: TranscodeSettings, encoder: str = Encoder.LIBX264.value,
                  threads: int = 1) -> dict[str, Any]:
    """Transcode one file (``dst`` is its final path). Returns the VideoResult fields that depend on
    the file, with ``status`` done / skipped / failed, or ``nospace`` when the disk filled up (the
    partial output is removed). Never raises for a bad source."""
    from .index import BadVideo
    from .probe import probe_packets

    t0 = time.perf_counter()
    res: dict[str, Any] = {"status": "failed"}
    try:
        import av

        av.logging.set_level(None)  # FFmpeg's console messages: the reason is reported instead
    except Exception:  # noqa: BLE001
        pass
    try:
        res["size_in"] = os.path.getsize(src)
        probed = probe_packets(src)
        rate, vfr, _ = _timing(src)
    except BadVideo as e:
        return dict(res, reason=e.reason, seconds=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001
        return dict(res, reason=f"unreadable: {_short(e)}", seconds=time.perf_counter() - t0)
    size = output_size(probed.width, probed.height, settings)
    res.update(frames_in=probed.num_frames, fps_in=probed.fps, fps_out=float(rate), vfr=vfr,
               width_out=size[0], height_out=size[1])
    provenance = {"bsp_dali_transcode": PROVENANCE_VERSION, "source_size": res["size_in"],
                  "frames": probed.num_frames, "settings": settings.output_key(), "vfr": vfr,
                  "rate": f"{rate.numerator}/{rate.denominator}"}
    if os.path.exists(dst) and not check_output(dst, provenance):
        return dict(res, status="skipped", frames_out=probed.num_frames, size_out=os.path.getsize(dst),
                    seconds=time.perf_counter() - t0)
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    tmp = os.path.join(os.path.dirname(dst), "." + Path(dst).stem + ".part.mp4")
    try:
        n_in = _encode(src, tmp, settings, encoder, threads, rate, size, provenance)
        if n_in != probed.num_frames:
            raise _Bad(f"undecodable: {n_in} frames decoded, the packets say {probed.num_frames}")
        why = check_output(tmp, provenance)
        if why:
            raise _Bad(f"the written output fails its check: {why}")
        os.replace(tmp, dst)
    except _Bad as e:
        _remove(tmp)
        return dict(res, reason=str(e), seconds=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001
        _remove(tmp)
        if is_disk_full(e):
            return dict(res, status="nospace", reason=f"disk full writing {dst}: {_short(e)}",
                        seconds=time.perf_counter() - t0)
        return dict(res, reason=f"undecodable or unwritable: {_short(e)}", seconds=time.perf_counter() - t0)
    return dict(res, status="done", frames_out=n_in, size_out=os.path.getsize(dst), seconds=time.perf_counter() - t0)


class _Bad(Exception):
    """A source that turned out unusable while transcoding (the reason is the message)."""


def _encode(src: str, tmp: str, settings: TranscodeSettings, encoder: str, threads: int, rate: Fraction,
            size: tuple[int, int], provenance: dict[str, Any]) -> int:
    """Decode ``src`` frame by frame in presentation order, scale each to ``size`` and encode it as
    frame i at time i / rate into ``tmp``; returns the number of frames."""
    import av
    from av.video.frame import PictureType
    from av.video.reformatter import Interpolation

    tb = 1 / rate
    n = 0
    with av.open(src) as source:
        vin = source.streams.video[0]
        vin.thread_type = "AUTO"
        vin.codec_context.thread_count = threads
        ain = source.streams.audio[0] if settings.keep_audio and source.streams.audio else None
        out, vout = _open_output(tmp, encoder, rate, size, settings, threads, provenance)
        with out:
            aout = None
            copy_audio = ain is not None and ain.codec_context.name in AUDIO_COPY
            if ain is not None:
                aout = out.add_stream_from_template(ain) if copy_audio else out.add_stream("aac", rate=ain.rate)
            streams = [vin] + ([ain] if ain is not None else [])
            for packet in source.demux(*streams):
                if packet.stream.type == "video":
                    try:
                        frames = packet.decode()
                    except Exception as e:  # noqa: BLE001
                        raise _Bad(f"undecodable: decoding failed after {n} frames ({_short(e)})") from None
                    for frame in frames:
                        img = frame.reformat(size[0], size[1], "yuv420p", interpolation=Interpolation.AREA)
                        img.pts, img.time_base = n, tb
                        img.pict_type = PictureType.NONE  # the source's I-frames must not force keyframes
                        _mux(out, vout.encode(img))
                        n += 1
                elif copy_audio:
                    if packet.dts is None:  # the demuxer's flush packet
                        continue
                    packet.stream = aout
                    _mux(out, [packet])
                else:
                    for af in packet.decode():
                        af.pts = None
                        _mux(out, aout.encode(af))
            if n == 0:
                raise _Bad("no frames: the video stream decodes to no frame")
            _mux(out, vout.encode())
            if aout is not None and not copy_audio:
                _mux(out, aout.encode())
    return n


# ---------------------------------------------------------------------------------- the data set
def _output_rel(path: str, root: Path) -> str:
    """Where an input path lands under DST: the same relative path, extension .mp4."""
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(root.resolve())
        except ValueError:
            p = p.relative_to(p.anchor)  # outside SRC: its absolute path, re-rooted under DST
    return str(p.with_suffix(".mp4"))


def _check_roots(src: Path, dst: Path) -> None:
    s, d = src.resolve(), dst.resolve()
    if s == d:
        raise TranscodeError(f"DST ({dst}) must not be SRC")
    if s in d.parents:
        raise TranscodeError(f"DST ({dst}) must not be inside SRC ({src}): indexing SRC would find the outputs")
    if d in s.parents:
        raise TranscodeError(f"SRC ({src}) must not be inside DST ({dst})")
    if dst.exists() and not dst.is_dir():
        raise TranscodeError(f"DST ({dst}) exists and is not a folder")


def transcode_dataset(source: DatasetIndex | str | os.PathLike, dst: str | os.PathLike,
                      settings: TranscodeSettings | None = None, *, annotations: str | os.PathLike | None = None,
                      list_file: str | os.PathLike | None = None, split: str | None = None,
                      workers: int | None = None, progress_total: Callable[[int], None] | None = None,
                      progress: Callable[[int], None] | None = None) -> TranscodeReport:
    """Transcode every video of ``source`` into ``dst`` and write the report there.

    ``source`` is a data root (with ``annotations`` or ``list_file`` as ``bsp-dali index`` takes
    them) or a :class:`DatasetIndex` (its videos, under its root). Returns the report; raises
    :class:`TranscodeError` for unusable input or settings and :class:`DiskFull` when the disk
    filled up (finished outputs kept, the report written if there is room)."""
    settings = settings or TranscodeSettings()
    if workers is not None and workers < 1:
        raise TranscodeError(f"--workers ({workers}) must be >= 1")
    dst_p = Path(dst)
    if isinstance(source, DatasetIndex):
        if source.root is None:
            raise TranscodeError("the index has no root folder to resolve its video paths against")
        root = Path(source.root)
        entries = [Entry(v.path, source.classes[v.label]) for v in source.videos]
        layout = "index"
    else:
        root = Path(source)
        try:
            entries = discover(root, annotations=annotations, list_file=list_file, split=split)
        except IngestError as e:
            raise TranscodeError(str(e)) from None
        layout = "csv" if annotations is not None else "list" if list_file is not None else "folder"
    _check_roots(root, dst_p)
    encoder, note = resolve_encoder(settings.encoder)
    log.info("%s", note)
    try:
        ensure_writable_dir(dst_p, "DST")  # created, and checked before any video is read
    except UnwritablePath as e:
        raise TranscodeError(str(e)) from None

    results: list[VideoResult] = []
    jobs: list[tuple[int, str, str]] = []  # (result index, source file, output file)
    taken: dict[str, str] = {}
    for e in entries:
        rel = _output_rel(e.path, root)
        r = VideoResult(src=e.path, dst=rel, class_name=e.class_name, status="failed")
        results.append(r)
        full = e.path if os.path.isabs(e.path) else str(root / e.path)
        if rel in taken:
            r.reason = f"output {rel} is already the output of {taken[rel]}"
        elif e.missing or not os.path.isfile(full):
            r.reason = "missing: listed but not on disk"
        else:
            taken[rel] = e.path
            jobs.append((len(results) - 1, full, str(dst_p / rel)))
    if progress_total:
        progress_total(len(entries))
    if progress and len(jobs) < len(entries):
        progress(len(entries) - len(jobs))

    n_workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    report = TranscodeReport(src=str(root), dst=str(dst_p), settings=settings.to_json(), encoder=encoder,
                             encoder_note=note, layout=layout, videos=results)
    t0 = time.perf_counter()

    def record(i: int, fields: dict[str, Any]) -> None:
        status = fields.pop("status")
        r = results[i]
        for k, v in fields.items():
            setattr(r, k, v)
        r.status = "failed" if status == "nospace" else status
        if status == "nospace" and not report.stopped:
            report.stopped = fields.get("reason", "disk full")
        if status == "failed":
            log.warning("%s: %s", r.src, r.reason)
        if progress:
            progress(1)

    if n_workers == 1:
        for i, full, out in jobs:
            if report.stopped:
                results[i].status, results[i].reason = "not_started", "the run stopped: disk full"
                continue
            record(i, transcode_one(full, out, settings, encoder, threads))
    else:
        # NVENC needs a CUDA context per process; fork after the parent opened one breaks it.
        ctx = multiprocessing.get_context("spawn" if encoder == Encoder.NVENC.value else None)
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
            pending: dict[Future, int] = {}
            queue = list(jobs)
            while queue or pending:
                while queue and len(pending) < n_workers and not report.stopped:  # no backlog: a full disk stops soon
                    i, full, out = queue.pop(0)
                    pending[pool.submit(transcode_one, full, out, settings, encoder, threads)] = i
                if report.stopped:
                    for i, _, _ in queue:
                        results[i].status, results[i].reason = "not_started", "the run stopped: disk full"
                    queue = []
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = pending.pop(fut)
                    try:
                        fields = fut.result()
                    except Exception as exc:  # noqa: BLE001 - a crashed worker marks only its video
                        fields = {"status": "failed", "reason": f"the transcoder crashed ({type(exc).__name__}: "
                                                                f"{_short(exc)})"}
                    record(i, fields)
    report.seconds = time.perf_counter() - t0

    try:
        if layout == "list":
            report.written_list = str(dst_p / Path(list_file).name)  # type: ignore[arg-type]
            lines = [f"{v.dst} {v.class_name}" for v in results]
            Path(report.written_list).write_text("\n".join(lines) + "\n")
        elif layout == "csv":
            report.written_list = str(dst_p / Path(annotations).name)  # type: ignore[arg-type]
            shutil.copyfile(annotations, report.written_list)  # type: ignore[arg-type]
        write_json(dst_p / REPORT_NAME, report.to_json(), indent=1)
    except OSError as e:
        if not (is_disk_full(e) and report.stopped):
            raise
        log.error("could not write the report to %s: the disk is full", dst_p)
    if report.stopped:
        s = report.summary()
        raise DiskFull(f"{report.stopped}. The partial output was removed. Finished outputs kept: "
                       f"{s['done'] + s['skipped']}; videos not started: {s['not_started']}. Free space in {dst_p} "
                       f"and run the same command again: finished outputs are skipped.", report)
    return report


__all__ = ["DiskFull", "Encoder", "REPORT_NAME", "TranscodeError", "TranscodeReport", "TranscodeSettings",
           "VideoResult", "check_output", "nvenc_status", "output_size", "read_provenance", "resolve_encoder",
           "transcode_dataset", "transcode_one"]
