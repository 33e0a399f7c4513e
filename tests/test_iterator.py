"""The drop-in iterator on real H.264/VP9 files, on the CPU: content, determinism, shards, resume."""

import shutil

import numpy as np
import pytest
import torch

from bsp_dali import SynthesisConfig
from bsp_dali.data.ingest import index_data
from bsp_dali.data.videogen import read_frame_index
from bsp_dali.decode.pyav import PyAVReader
from bsp_dali.iterator import BSPIterator, DecodeFailures
from bsp_dali.plan.augment import SpatialConfig, apply_cpu
from bsp_dali.synth.tables import DEFAULT_MEAN, DEFAULT_STD

SMALL = SpatialConfig(size=(32, 48))


def make(index, **kw):
    kw.setdefault("spatial", SMALL)
    kw.setdefault("device", "cpu")
    return BSPIterator(index, **kw)


def test_batches_hold_the_recipes_applied_to_the_decoded_frames(indexed_h264):
    it = make(indexed_h264, batch_size=4, return_recipes=True, epoch_size=8)
    reader = PyAVReader(indexed_h264)
    mean, std = np.array(DEFAULT_MEAN), np.array(DEFAULT_STD)
    n_batches = 0
    for batch in it:
        n_batches += 1
        video = batch["video"]
        assert video.shape == (4, 3, 8, 32, 48) and video.dtype == torch.float32
        for n, rec in enumerate(batch["recipes"]):
            plan = it.plan(rec["index"], it.epoch)
            assert plan.to_json() == rec
            assert batch["label"][n] == rec["label"] and batch["index"][n] == rec["index"]
            assert batch["mu"][n] == (-1 if rec["mu"] is None else rec["mu"])
            assert batch["action"][n] == plan.sources[0].label
            assert np.allclose(batch["heatmap"][n].numpy(), plan.heatmap)
            # every output frame = the weighted sum of its source frames, decoded and transformed
            for i, terms in enumerate(rec["recipe"]):
                want = 0.0
                for slot, frame, w in terms:
                    src = indexed_h264.videos[plan.sources[slot].video]
                    raw = reader.read(src, [frame])
                    assert read_frame_index(raw[0]) == frame
                    want = want + w * apply_cpu(raw, plan.crop, plan.flip, (32, 48))[0].astype(np.float64)
                got = video[n, :, i].numpy().transpose(1, 2, 0) * std + mean
                assert np.abs(got - want).max() < 1e-2
    assert n_batches == 2 == len(it)


def test_same_samples_whatever_the_batch_size_and_resume_point(indexed_h264):
    a = make(indexed_h264, batch_size=2, epoch_size=8, seed=3)
    whole = [b for b in a]
    b = make(indexed_h264, batch_size=4, epoch_size=8, seed=3)
    big = [x for x in b]
    va = torch.cat([x["video"] for x in whole])
    vb = torch.cat([x["video"] for x in big])
    assert torch.equal(va, vb)
    # stop after 1 batch, save, resume in a new iterator
    c = make(indexed_h264, batch_size=2, epoch_size=8, seed=3)
    first = next(iter(c))
    state = c.state_dict()
    d = make(indexed_h264, batch_size=2, epoch_size=8, seed=3)
    d.load_state_dict(state)
    rest = [x for x in d]
    assert len(whole) == 4 and len(big) == 2 and len(rest) == 3
    assert torch.equal(first["video"], whole[0]["video"])
    for x, y in zip(rest, whole[1:]):
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["index"], y["index"])
    with pytest.raises(ValueError, match="seed"):
        make(indexed_h264, batch_size=2, epoch_size=8, seed=4).load_state_dict(state)


def test_epochs_differ_and_iterating_again_starts_the_next_epoch(indexed_h264):
    it = make(indexed_h264, batch_size=4, epoch_size=4, return_recipes=True)
    e0 = [b["recipes"] for b in it]
    e1 = [b["recipes"] for b in it]
    assert it.epoch == 1 and e0 != e1


@pytest.mark.parametrize("policy, lens", [("drop", [1, 1, 1]), ("partial", [2, 2, 2]), ("fill", [2, 2, 2])])
def test_shards_are_disjoint_and_cover_the_epoch(indexed_h264, policy, lens):
    E, B, W = 10, 2, 3
    seen = []
    for r in range(W):
        it = make(indexed_h264, batch_size=B, epoch_size=E, shard=(r, W), last_batch_policy=policy)
        assert len(it) == lens[r]
        seen.append([i for b in range(len(it)) for i in it.batch_indices(b)])
    flat = [i for s in seen for i in s]
    if policy == "drop":
        assert len(set(flat)) == len(flat) == W * (E // W // B) * B
    elif policy == "partial":
        assert sorted(flat) == list(range(E))
    else:
        assert set(flat) == set(range(E)) and all(len(s) == 4 for s in seen)


def test_action_mode_yields_each_video_once_with_its_class(indexed_h264):
    n = len(indexed_h264)
    it = make(indexed_h264, batch_size=1, mode="action", return_recipes=True, last_batch_policy="partial")
    got = []
    for b in it:
        rec = b["recipes"][0]
        path = rec["sources"][0]["path"]
        video = next(v for v in indexed_h264.videos if v.path == path)
        assert b["label"][0] == video.label == b["action"][0] and b["mu"][0] == -1
        got.append(path)
    assert sorted(got) == sorted(v.path for v in indexed_h264.videos) and len(got) == n


@pytest.fixture(scope="module")
def indexed_mixed(tmp_path_factory, kinetics_h264, kinetics_vp9):
    """One index of both folders: H.264 .mp4 and VP9 .webm files side by side in each class."""
    root = tmp_path_factory.mktemp("mixed")
    for src in (kinetics_h264, kinetics_vp9):
        shutil.copytree(src, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("bsp-dali-manifest*"))
    return index_data(root, min_frames=8, workers=1).index


def test_vp9_through_dali_cpu_and_h264_through_pyav(indexed_mixed):
    """One iterator over a mixed index: its VP9 windows go to DALI's CPU reader, its H.264
    windows to PyAV, and every output frame matches an all-PyAV reference decode of the same plans."""
    pytest.importorskip("nvidia.dali")
    index = indexed_mixed
    assert {v.codec for v in index.videos} == {"h264", "vp9"}
    it = make(index, batch_size=3, epoch_size=12)
    assert it.decoder == "dali"
    ref = make(index, batch_size=3, epoch_size=12, decoder="pyav")
    pairs = list(zip(it.iter_raw(), ref.iter_raw()))
    assert len(pairs) == len(it) == len(ref) == 4
    std = np.array(DEFAULT_STD)[:, None, None, None]  # (C, T, H, W): normalized values back to pixel levels
    routes, vp9_frames = set(), 0
    for a, b in pairs:
        assert [p.index for p in a.plans] == [p.index for p in b.plans]
        assert a.video.shape == b.video.shape == (3, 3, 8, 32, 48)  # NCTHW
        routes |= {(index.videos[u.video].codec, it.stage.route(u)) for u in a.windows.units}
        for n, plan in enumerate(a.plans):
            diff = np.abs(a.video[n].astype(np.float64) - b.video[n]) * std  # (C, T, H, W)
            codecs = [index.videos[s.video].codec for s in plan.sources]
            for t, terms in enumerate(plan.recipe):
                err = diff[:, t].mean()
                if all(codecs[slot] == "h264" for slot, _, w in terms if w > 0):
                    # only H.264 in this frame: PyAV in both iterators, the same pixels
                    assert diff[:, t].max() < 1e-3, (plan.index, t, codecs)
                else:
                    # VP9 content: DALI's decode and resize against PyAV's, close, not equal
                    vp9_frames += 1
                    assert err < 3.0, (plan.index, t, codecs, err)
    # both routes were taken in the same epoch, and VP9 reached the output
    assert routes == {("vp9", "fixed"), ("h264", "cpu")}
    assert vp9_frames >= 8
    it.close()
    ref.close()


@pytest.mark.parametrize("cpu_workers", ["processes", "threads"])
def test_a_file_broken_after_indexing_is_replaced_not_fatal(tmp_path, kinetics_h264, cpu_workers):
    root = tmp_path / "data"
    shutil.copytree(kinetics_h264, root, ignore=shutil.ignore_patterns("bsp-dali-manifest*"))
    index = index_data(root, min_frames=8, workers=1).index
    it = make(index, batch_size=3, epoch_size=9, return_recipes=True, synthesis=SynthesisConfig(types=("same_speed",)),
              cpu_workers=cpu_workers)
    victim = index.videos[it.plan(4, 0).sources[0].video]  # a video that sample 4 uses
    (root / victim.path).write_bytes(b"\x00" * 5000)  # corrupt after probing
    batches = list(it)
    assert len(batches) == 3
    used = {s["path"] for b in batches for r in b["recipes"] for s in r["sources"]}
    assert victim.path not in used
    assert [p for p, _ in it.failures] == [victim.path]
    # the samples that did not touch the broken file are unchanged
    clean = make(index.subset(range(len(index))), batch_size=3, epoch_size=9, synthesis=SynthesisConfig(types=("same_speed",)))
    clean_recs = [clean.plan(i, 0).to_json() for i in range(9)]
    kept = [r for b in batches for r in b["recipes"]]
    assert len(kept) == len(clean_recs) == 9
    for r, c in zip(kept, clean_recs):
        if c["sources"][0]["path"] != victim.path:
            assert r == c
    # with no budget for bad files, the run stops with an error naming the file
    strict = make(index, batch_size=3, epoch_size=9, max_bad_videos=0, synthesis=SynthesisConfig(types=("same_speed",)),
                  cpu_workers=cpu_workers)
    with pytest.raises(DecodeFailures, match=victim.path.split("/")[-1]):
        list(strict)


def test_bad_arguments_are_named(indexed_h264):
    with pytest.raises(ValueError, match="batch_size"):
        make(indexed_h264, batch_size=0)
    with pytest.raises(ValueError, match="mode"):
        make(indexed_h264, batch_size=2, mode="speed")
    with pytest.raises(ValueError, match="no batch"):
        make(indexed_h264, batch_size=100)
    with pytest.raises(ValueError, match="last_batch_policy"):
        make(indexed_h264, batch_size=2, last_batch_policy="keep")
    with pytest.raises(ValueError, match="shard"):
        make(indexed_h264, batch_size=2, shard=(2, 2))


def _dist_worker(rank, world, init_file, manifest, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from bsp_dali.data.ingest import load_data

    it = BSPIterator(load_data(manifest), batch_size=2, epoch_size=8, device="cpu", spatial=SMALL)
    idx = [int(i) for b in it for i in b["index"]]
    with open(f"{out}.{rank}", "w") as fh:
        fh.write(" ".join(map(str, idx)) + f"\n{it.rank} {it.world}\n")
    dist.destroy_process_group()


def test_shard_is_taken_from_torch_distributed(tmp_path, indexed_h264):
    import torch.multiprocessing as mp

    manifest = tmp_path / "m.json"
    indexed_h264.save(manifest)
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(manifest), str(tmp_path / "out")), nprocs=2)
    seen = []
    for r in range(2):
        idx_line, shard_line = (tmp_path / f"out.{r}").read_text().splitlines()
        assert shard_line == f"{r} 2"
        seen.append([int(i) for i in idx_line.split()])
    assert sorted(seen[0] + seen[1]) == list(range(8)) and not set(seen[0]) & set(seen[1])


def test_an_abandoned_iterator_stops_its_prefetch_thread(indexed_h264):
    import gc

    it = make(indexed_h264, batch_size=2, epoch_size=8)
    next(iter(it))
    thread = it._worker.thread
    del it
    gc.collect()
    thread.join(timeout=30)
    assert not thread.is_alive()
    with make(indexed_h264, batch_size=2, epoch_size=8) as it2:  # a context manager closes it
        next(iter(it2))
        thread = it2._worker.thread
    assert not thread.is_alive()


def test_worker_processes_and_threads_give_the_same_batches(indexed_h264):
    kw = dict(batch_size=3, epoch_size=9, seed=5, dtype="float16", decoder="pyav", num_threads=2)
    with make(indexed_h264, cpu_workers="processes", **kw) as a, make(indexed_h264, cpu_workers="threads", **kw) as b:
        assert "worker process" in a.decoder_description and "thread" in b.decoder_description
        n = 0
        for x, y in zip(a, b):
            assert torch.equal(x["video"], y["video"]) and torch.equal(x["index"], y["index"])
            if n == 0:  # the CPU synthesizes in its own thread, off the consumer's
                assert a._worker.synth is not None and a._worker.synth.name == "bsp-synthesis"
            n += 1
        assert n == 3
