"""The iterator on VP9 files through DALI's CPU file-list reader (fn.experimental.readers.video):
determinism, resume, shared windows and files broken after indexing, as on the PyAV path."""

import shutil

import numpy as np
import pytest
import torch

from bsp_dali import SynthesisConfig
from bsp_dali.data.ingest import index_data
from bsp_dali.iterator import BSPIterator, DecodeFailures
from bsp_dali.plan.augment import SpatialConfig

SMALL = SpatialConfig(size=(32, 48))


def make(index, **kw):
    pytest.importorskip("nvidia.dali")
    kw.setdefault("spatial", SMALL)
    kw.setdefault("device", "cpu")
    kw.setdefault("decoder", "dali")
    return BSPIterator(index, **kw)


def test_file_list_reader_gives_the_same_clips_whatever_the_batching_and_resume_point(indexed_vp9):
    a = make(indexed_vp9, batch_size=2, epoch_size=8, seed=3, pipelines=2, decode_ahead=2, return_recipes=True)
    assert "fn.experimental.readers.video" in a.decoder_description
    whole = list(a)
    assert len(whole) == 4 and all(x["video"].shape[0] == 2 for x in whole)
    # other batch size, one pipeline: other windows (dedupe differs), the same pixels
    b = make(indexed_vp9, batch_size=4, epoch_size=8, seed=3)
    assert torch.equal(torch.cat([x["video"] for x in whole]), torch.cat([x["video"] for x in b]))
    # the per-source decoder (the previous path) on the same plans: the same pixels too
    c = make(indexed_vp9, batch_size=4, epoch_size=8, seed=3, dali_reader="decoder")
    assert torch.equal(torch.cat([x["video"] for x in whole]), torch.cat([x["video"] for x in c]))
    # resume after one batch
    d = make(indexed_vp9, batch_size=2, epoch_size=8, seed=3, pipelines=2, decode_ahead=2)
    next(iter(d))
    state = d.state_dict()
    e = make(indexed_vp9, batch_size=2, epoch_size=8, seed=3, pipelines=2, decode_ahead=2)
    e.load_state_dict(state)
    rest = list(e)
    assert len(rest) == 3
    for x, y in zip(rest, whole[1:]):
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["index"], y["index"])
    for it in (a, b, c, d, e):
        it.close()


def test_shared_windows_decode_fewer_frames_and_render_the_recipes(indexed_vp9):
    kw = dict(batch_size=4, epoch_size=8, seed=1, dtype="uint8", layout="NTCHW",
              synthesis=SynthesisConfig(types=("same_speed", "diff_speed")))
    frames = {}
    for share in (1, 4):
        it = make(indexed_vp9, share=share, **kw)
        ref = make(indexed_vp9, share=share, dali_reader="decoder", **kw)  # planned frames only
        raws, refs = list(it.iter_raw()), list(ref.iter_raw())
        assert len(raws) == len(refs) == 2  # 8 samples in batches of 4
        frames[share] = sum(r.windows.decoded_frames for r in raws)
        for r, q in zip(raws, refs):
            assert len(r.plans) == len(q.plans) == 4
            assert [p.to_json() for p in r.plans] == [p.to_json() for p in q.plans]
            assert np.array_equal(r.video, q.video)
        it.close()
        ref.close()
    assert frames[4] < 0.6 * frames[1]


def test_a_vp9_file_broken_after_indexing_is_replaced_not_fatal(tmp_path, kinetics_vp9):
    root = tmp_path / "data"
    shutil.copytree(kinetics_vp9, root, ignore=shutil.ignore_patterns("bsp-dali-manifest*"))
    index = index_data(root, min_frames=8, workers=1).index
    cfg = SynthesisConfig(types=("same_speed",))
    it = make(index, batch_size=3, epoch_size=9, return_recipes=True, synthesis=cfg, pipelines=2, decode_ahead=1)
    victim = index.videos[it.plan(4, 0).sources[0].video]
    data = (root / victim.path).read_bytes()
    (root / victim.path).write_bytes(data[:len(data) // 2])  # truncated after probing
    batches = list(it)
    assert len(batches) == 3
    used = {s["path"] for b in batches for r in b["recipes"] for s in r["sources"]}
    assert victim.path not in used
    assert [p for p, _ in it.failures] == [victim.path] and "DALI (cpu" in it.failures[0][1]
    clean = make(index, batch_size=3, epoch_size=9, synthesis=cfg)
    for r in (r for b in batches for r in b["recipes"]):
        c = clean.plan(r["index"], 0).to_json()
        if c["sources"][0]["path"] != victim.path:
            assert r == c
    strict = make(index, batch_size=3, epoch_size=9, max_bad_videos=0, synthesis=cfg)
    with pytest.raises(DecodeFailures, match=victim.path.split("/")[-1]):
        list(strict)
    for x in (it, clean, strict):
        x.close()
