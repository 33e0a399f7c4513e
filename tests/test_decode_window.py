"""Skipping unreferenced frames before a window (decode.decode_window) gives exactly the frames of a
plain full decode: H.264 with B-frames (closed and open GOPs), HEVC with open GOPs, VP9; the
fallbacks where the pts mapping cannot be trusted; and the ffmpeg program as an independent check."""

import dataclasses

import numpy as np
import pytest

from bsp_dali import BadVideo
from bsp_dali.data.index import DatasetIndex, VideoInfo
from bsp_dali.data.probe import probe_packets
from bsp_dali.data.videogen import index_frame, read_frame_index
from bsp_dali.decode.pyav import PyAVReader, WindowStats, decode_window
from conftest import ffmpeg_frames

SIZE = (64, 96)


def write(path, encoder, n=90, gop=24, options=None):
    import av

    if encoder not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {encoder}")
    with av.open(str(path), "w") as c:
        s = c.add_stream(encoder, rate=25)
        s.height, s.width = SIZE
        s.pix_fmt, s.gop_size = "yuv420p", gop
        s.options = options or {}
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(index_frame(i, *SIZE), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


STREAMS = {  # name: encoder, GOP, options
    # x264 defaults for B-frames (3, pyramid): the b-pyramid's middle B-frames are references
    "h264-bframes": ("libx264", 24, {"bf": "3", "preset": "veryfast"}),
    # open GOPs: frames shown before a keyframe are decoded after it and reference the previous GOP
    # (a GOP that is not a multiple of the mini-GOP puts keyframes where B-frames lead them)
    "h264-open-gop": ("libx264", 13, {"bf": "3", "x264-params": "open-gop=1:scenecut=0"}),
    "hevc-open-gop": ("libx265", 12, {"bf": "3", "x265-params": "log-level=error:open-gop=1:scenecut=0"}),
    # B-frames from an encoder that writes no reorder depth in the stream: the decoder learns it as
    # it goes (the skipping path opens files without FFmpeg's probe, which would guess it)
    "mpeg4-bframes": ("mpeg4", 24, {"bf": "2", "qscale": "4"}),
    "vp9": ("libvpx-vp9", 24, {"deadline": "realtime", "cpu-used": "8"}),
    "vp9-altref": ("libvpx-vp9", 24, {"deadline": "good", "cpu-used": "8", "auto-alt-ref": "1", "lag-in-frames": "16"}),
}


@pytest.fixture(scope="module", params=sorted(STREAMS))
def stream(request, tmp_path_factory):
    encoder, gop, options = STREAMS[request.param]
    ext = "webm" if "vp9" in request.param else "mp4"
    path = write(tmp_path_factory.mktemp("streams") / f"{request.param}.{ext}", encoder, gop=gop, options=options)
    return request.param, path


def full_decode(path):
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def windows_of(n, keyframes, count=30, seed=0):
    """Random windows, plus the edge cases: at and just after each keyframe, the last frames."""
    rng = np.random.default_rng(seed)
    out = [(0, 0), (n - 1, n - 1), (n - 12, n - 1)]
    for k, _ in keyframes[1:]:
        out += [(k, k + 5), (k - 1, k + 1), (k + 1, k + 3)]
    for _ in range(count):
        a = int(rng.integers(0, n))
        out.append((a, int(min(n - 1, a + rng.integers(0, 14)))))
    return [(a, b) for a, b in out if 0 <= a <= b < n]


@pytest.mark.parametrize("threads", [1, 0])
def test_skipping_windows_equal_a_full_decode(stream, threads):
    name, path = stream
    info = probe_packets(path)
    ref = full_decode(path)
    assert len(ref) == info.num_frames == 90 and len(info.keyframes) >= 3
    skipped = plain = 0
    for a, b in windows_of(info.num_frames, info.keyframes):
        got: dict[int, np.ndarray] = {}
        stats = WindowStats()
        decode_window(str(path), info.keyframes, a, b, lambda n, f: got.__setitem__(n, f.to_ndarray(format="rgb24")),
                      threads=threads, skip_nonref=True, stats=stats)
        assert sorted(got) == list(range(a, b + 1)), (name, a, b)
        for n, frame in got.items():
            assert np.array_equal(frame, ref[n]), (name, a, b, n)
        assert stats.fallbacks == 0, (name, a, b, stats.reason)  # the mapping was certain: no plain path
        skipped += stats.decoded
        plain += b - max(k for k, _ in info.keyframes if k <= a) + 1
    if name.startswith(("h264", "hevc", "mpeg4")):
        assert skipped < 0.9 * plain, (name, skipped, plain)  # B-frames before the windows were skipped
    else:
        assert skipped == plain  # VP9: nothing here is unreferenced, every frame is decoded


@pytest.mark.parametrize("stream", ["h264-open-gop", "hevc-open-gop"], indirect=True)
def test_open_gops_really_reorder_around_keyframes(stream):
    """The open-GOP streams above are what they claim: some keyframe's frame index differs from its
    position among the packets in decode order (leading frames decoded after it)."""
    import av

    name, path = stream
    with av.open(str(path)) as c:
        keys = [k for k, p in enumerate(q for q in c.demux(c.streams.video[0]) if q.size) if p.is_keyframe]
    assert [k for k, _ in probe_packets(path).keyframes] != keys


@pytest.mark.parametrize("stream", ["h264-bframes", "h264-open-gop", "mpeg4-bframes"], indirect=True)
def test_counting_output_frames_under_skipping_would_be_wrong(stream):
    """Why frames are told apart by pts: with unreferenced frames skipped, the n-th frame out of the
    decoder is not frame n. (So the test above would fail on a counting implementation.)"""
    import av

    name, path = stream
    ref = full_decode(path)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.skip_frame = "NONREF"
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    assert len(frames) < len(ref)
    assert any(not np.array_equal(f, r) for f, r in zip(frames, ref))


def test_windows_match_the_ffmpeg_program(stream):
    name, path = stream
    ref = ffmpeg_frames(path)
    if ref is None:
        pytest.skip("imageio-ffmpeg missing")
    info = probe_packets(path)
    assert len(ref) == info.num_frames
    for a, b in windows_of(info.num_frames, info.keyframes, count=6, seed=1):
        got = {}
        decode_window(str(path), info.keyframes, a, b, lambda n, f: got.__setitem__(n, f.to_ndarray(format="rgb24")),
                      threads=1)
        for n, frame in got.items():
            # same bitstream, two FFmpeg builds: colour conversion may differ by a few levels
            assert np.abs(frame.astype(int) - ref[n].astype(int)).mean() < 2.0, (name, n)
            assert read_frame_index(frame) == n


def _remux(src, dst, fmt=None):
    import av

    with av.open(str(src)) as c, av.open(str(dst), "w", format=fmt) as o:
        s = c.streams.video[0]
        out = o.add_stream_from_template(s)
        for p in c.demux(s):
            if p.size:
                p.stream = out
                o.mux(p)


def test_uncertain_mappings_fall_back_to_the_plain_decode(tmp_path):
    path = write(tmp_path / "b.mp4", "libx264", options={"bf": "3"})
    info = probe_packets(path)
    ref = full_decode(path)
    k, pts = info.keyframes[1]

    def run(p, keyframes, a, b):
        got, stats = {}, WindowStats()
        decode_window(str(p), keyframes, a, b, lambda n, f: got.__setitem__(n, f.to_ndarray(format="rgb24")),
                      threads=1, stats=stats)
        assert sorted(got) == list(range(a, b + 1))
        assert all(np.array_equal(got[n], ref[n]) for n in got)
        return stats

    # a keyframe table whose pts is not where the seek lands: neither mapping holds, decode from the start
    stats = run(path, [(0, info.keyframes[0][1]), (k, pts + 1)], k + 2, k + 6)
    assert stats.fallbacks == 1 and "keyframe" in stats.reason
    assert stats.decoded >= k + 7  # from frame 0
    # an Annex B stream: packets carry no pts (the index then counts frames by decoding)
    raw = tmp_path / "b.h264"
    _remux(path, raw, fmt="h264")
    stats = run(raw, [(0, 0)], 30, 35)
    assert stats.fallbacks == 1 and "pts" in stats.reason
    # no recorded keyframe at or before the window: plain decode from the start, nothing to skip
    stats = run(path, [], 30, 35)
    assert stats.fallbacks == 0 and stats.decoded == 36


def test_pyav_reader_skips_only_when_asked(tmp_path):
    path = write(tmp_path / "b.mp4", "libx264", options={"bf": "3"})
    info = probe_packets(path)
    video = VideoInfo(path.name, 0, info.num_frames, keyframes=tuple(info.keyframes))
    index = DatasetIndex([video], ["c"], root=str(tmp_path))
    plain, skip = PyAVReader(index), PyAVReader(index, skip_nonref=True, threads=1)
    k = info.keyframes[1][0]
    frames = [k + 18, k + 19, k + 25, k + 20]  # far into a GOP: B-frames before the first
    assert np.array_equal(plain.read(video, frames), skip.read(video, frames))
    assert skip.decoded < plain.decoded and plain.fallbacks == skip.fallbacks == 0
    with pytest.raises(BadVideo, match="the video has 90"):
        skip.read(video, [89, 90])
    short = dataclasses.replace(video, num_frames=95)  # the index promises frames the file lacks
    with pytest.raises(BadVideo, match="stream ended early"):
        skip.read(short, [88, 94])
