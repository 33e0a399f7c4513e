"""The GPU decode stage: DALI's file-list readers on NVDEC, several pipelines, preview pixels
(GPU machines only; written without a GPU, first run by the GPU verification)."""

import shutil

import numpy as np
import pytest

from bsp_dali import SynthesisConfig
from bsp_dali.data.videogen import read_frame_index
from bsp_dali.decode.windows import DecodeUnit
from bsp_dali.plan.augment import FULL_BOX, SpatialConfig
from conftest import ffmpeg_frames

pytestmark = pytest.mark.gpu

UNITS_L = 9


def _units(index):
    vids = index.videos
    return [DecodeUnit(0, 3, UNITS_L, FULL_BOX, False), DecodeUnit(2, vids[2].num_frames - UNITS_L, UNITS_L, FULL_BOX, False),
            DecodeUnit(1, 0, UNITS_L, FULL_BOX, False), DecodeUnit(0, 3, UNITS_L, FULL_BOX, True),
            DecodeUnit(3, 20, UNITS_L, FULL_BOX, False), DecodeUnit(4, 11, UNITS_L, FULL_BOX, False)]


@pytest.mark.parametrize("kind", ["legacy", "experimental"])
def test_gpu_file_list_reader_windows_match_ffmpeg_frame_by_frame(indexed_h264, kinetics_h264, kind):
    pytest.importorskip("nvidia.dali")
    from bsp_dali.decode.dali_readers import DaliFileListReader

    units = _units(indexed_h264)
    reader = DaliFileListReader(indexed_h264, kind, "gpu", UNITS_L, (64, 96), max_batch=4)
    out = reader.read_windows(units)
    assert len(out) == len(units) == 6
    for u, stack in zip(units, out):
        assert type(stack).__module__.startswith("cupy")
        host = stack.get()
        assert [read_frame_index(f[:, ::-1] if u.flip else f) for f in host] == list(u.frames)
        ref = ffmpeg_frames(kinetics_h264 / indexed_h264.videos[u.video].path)
        if ref is None:
            continue
        want = ref[u.start:u.stop][:, :, ::-1] if u.flip else ref[u.start:u.stop]
        for f in range(UNITS_L):
            assert np.abs(host[f].astype(int) - want[f]).mean() < 6.0, (kind, u, f)


def test_several_pipelines_give_the_clips_of_one(indexed_h264):
    pytest.importorskip("nvidia.dali")
    from bsp_dali.decode.nvdec import nvdec_engines
    from bsp_dali.iterator import BSPIterator

    kw = dict(batch_size=4, epoch_size=16, spatial=SpatialConfig(size=(32, 48)), device="gpu", dtype="uint8")
    many = BSPIterator(indexed_h264, pipelines=7, decode_ahead=1, **kw)
    one = BSPIterator(indexed_h264, pipelines=1, decode_ahead=2, **kw)
    assert many.stage.pipelines == 7 and "fn.readers.video" in many.decoder_description
    pairs = list(zip(many.iter_raw(), one.iter_raw()))
    # 16 samples in batches of 4: both streams give 4 batches of 4 clips, none missing
    assert len(pairs) == len(many) == len(one) == 4
    for a, b in pairs:
        assert len(a.plans) == len(b.plans) == 4 and a.video.shape[0] == 4
        assert [p.index for p in a.plans] == [p.index for p in b.plans]
        assert bool((a.video == b.video).all())
    assert nvdec_engines(0) >= 1
    many.close()
    one.close()


def test_gpu_stage_replaces_samples_of_a_broken_h264_file(tmp_path, kinetics_h264):
    pytest.importorskip("nvidia.dali")
    from bsp_dali.data.ingest import index_data
    from bsp_dali.iterator import BSPIterator

    root = tmp_path / "data"
    shutil.copytree(kinetics_h264, root, ignore=shutil.ignore_patterns("bsp-dali-manifest*"))
    index = index_data(root, min_frames=8, workers=1).index
    cfg = SynthesisConfig(types=("same_speed",))
    it = BSPIterator(index, batch_size=3, epoch_size=9, return_recipes=True, synthesis=cfg, device="gpu",
                     spatial=SpatialConfig(size=(32, 48)), pipelines=2)
    victim = index.videos[it.plan(4, 0).sources[0].video]
    data = (root / victim.path).read_bytes()
    n = len(data)
    (root / victim.path).write_bytes(data[:n // 3] + b"\x00" * (n // 3) + data[2 * n // 3:])
    batches = list(it)
    assert len(batches) == 3 and [p for p, _ in it.failures] == [victim.path]
    assert victim.path not in {s["path"] for b in batches for r in b["recipes"] for s in r["sources"]}
    it.close()


def test_preview_h264_on_gpu_matches_an_independent_decode(tmp_path, kinetics_h264, indexed_h264):
    pytest.importorskip("nvidia.dali")
    from test_preview_data import preview_against_ffmpeg

    # NVDEC + DALI's resize against ffmpeg + Pillow, every frame (acceptance: mean error <= 6)
    preview_against_ffmpeg(tmp_path, kinetics_h264, "gpu", 12, "DALI NVDEC (GPU): fn.readers.video", 6.0, 120)
