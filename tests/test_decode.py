"""The CPU readers and DALI's CPU decoder return exactly the planned frames."""

import numpy as np
import pytest

from bsp_dali import BadVideo
from bsp_dali.data.videogen import read_frame_index
from bsp_dali.decode.pyav import PyAVReader
from bsp_dali.decode.readers import CPUWindowReader
from bsp_dali.decode.windows import DecodeUnit
from bsp_dali.plan.augment import apply_cpu
from conftest import ffmpeg_frames


def test_pyav_reader_returns_the_requested_frames_in_order(indexed_h264):
    reader = PyAVReader(indexed_h264)
    for v in indexed_h264.videos[:4]:
        n = v.num_frames
        req = [n - 1, 0, 5, 5, n // 2, 1, n - 1]  # any order, repeats, both ends
        frames = reader.read(v, req)
        assert frames.shape == (len(req), 64, 96, 3) and frames.dtype == np.uint8
        assert [read_frame_index(f) for f in frames] == req


def test_pyav_seek_gives_the_same_pixels_as_decoding_from_the_start(indexed_h264):
    import dataclasses

    reader = PyAVReader(indexed_h264)
    v = max(indexed_h264.videos, key=lambda v: v.num_frames)
    assert len(v.keyframes) >= 2, "the test data should have several keyframes (gop 12)"
    late = list(range(v.keyframes[-1][0] - 2, v.num_frames))
    seek = reader.read(v, late)
    no_seek = reader.read(dataclasses.replace(v, keyframes=()), late)
    assert np.array_equal(seek, no_seek)


def test_pyav_matches_an_independent_decoder(indexed_h264, kinetics_h264):
    v = indexed_h264.videos[0]
    ref = ffmpeg_frames(kinetics_h264 / v.path)
    if ref is None:
        pytest.skip("imageio-ffmpeg missing")
    got = PyAVReader(indexed_h264).read(v, range(v.num_frames))
    assert len(ref) == v.num_frames
    # same bitstream, two FFmpeg builds: colour conversion may differ by a few levels
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 2.0


def test_frames_beyond_the_end_are_an_error_not_a_padded_frame(indexed_h264):
    v = indexed_h264.videos[0]
    with pytest.raises(BadVideo, match="the video has"):
        PyAVReader(indexed_h264).read(v, [0, v.num_frames])
    # the window reader the package decodes with: the bad unit comes back as its file's BadVideo,
    # the good one beside it is decoded
    reader = CPUWindowReader(indexed_h264, PyAVReader(indexed_h264), (32, 32))
    good, past = DecodeUnit(0, 0, 2, (0, 0, 1, 1), False), DecodeUnit(0, v.num_frames - 1, 4, (0, 0, 1, 1), False)
    out = reader.read_windows([past, good])
    assert isinstance(out[0], BadVideo) and out[0].path == indexed_h264.resolve(v.path)
    assert "the video has" in out[0].reason
    assert out[1].shape == (2, 32, 32, 3) and out[1].dtype == np.uint8


def test_dali_cpu_decoder_on_vp9(indexed_vp9, kinetics_vp9):
    pytest.importorskip("nvidia.dali")
    from bsp_dali.decode.pipeline import DaliDecoder, DaliPipelineError, SourceRequest
    from bsp_dali.decode.pyav import read_bytes

    dec = DaliDecoder((64, 96), device="cpu", max_sources=4, num_threads=2)
    vids = indexed_vp9.videos[:3]
    reqs = [SourceRequest(read_bytes(indexed_vp9, k), [3, 1, 1, v.num_frames - 1], (0, 0, 1, 1), False)
            for k, v in enumerate(vids)]
    stacks = dec.decode(reqs)
    for v, s in zip(vids, stacks):
        assert s.shape == (4, 64, 96, 3)
        assert [read_frame_index(f) for f in s] == [3, 1, 1, v.num_frames - 1]
        ref = PyAVReader(indexed_vp9).read(v, [3, 1, 1, v.num_frames - 1])
        # two YUV->RGB conversions (DALI, swscale) differ by a couple of levels on average
        assert np.abs(s.astype(int) - ref.astype(int)).mean() < 4.0
    # a flipped, cropped request is the same frame, transformed: the right half, mirrored
    box = (0.0, 0.5, 1.0, 1.0)
    crop = dec.decode([SourceRequest(read_bytes(indexed_vp9, 0), [2], box, True)])[0].astype(int)
    assert crop.shape == (1, 64, 96, 3)
    raw = PyAVReader(indexed_vp9).read(vids[0], [2])
    err = np.abs(crop - apply_cpu(raw, box, True, (64, 96))).mean()
    assert err < 4.0, err
    for wrong in (apply_cpu(raw, box, False, (64, 96)), apply_cpu(raw, (0.0, 0.0, 1.0, 0.5), True, (64, 96)),
                  apply_cpu(PyAVReader(indexed_vp9).read(vids[0], [3]), box, True, (64, 96))):
        assert np.abs(crop - wrong).mean() > 2 * err + 2  # not unflipped, not the left half, not frame 3
    # past the end: an error (DALI pads silently unless told not to), and the decoder recovers
    bad = SourceRequest(read_bytes(indexed_vp9, 0), [vids[0].num_frames + 5], (0, 0, 1, 1), False)
    with pytest.raises(DaliPipelineError):
        dec.decode([reqs[1], bad])
    assert dec.find_failures([reqs[1], bad]) == [1]
    assert [read_frame_index(f) for f in dec.decode([reqs[1]])[0]] == [3, 1, 1, vids[1].num_frames - 1]
