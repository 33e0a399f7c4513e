"""The decode stage on the CPU: routing, failure policy, planning ahead, and DALI's file-list reader
(fn.experimental.readers.video on the CPU) on VP9 files, checked frame by frame against ffmpeg."""

import shutil

import numpy as np
import pytest

from bsp_dali import BadVideo, Planner, SynthesisConfig
from bsp_dali.data.demo import DemoReader, demo_index
from bsp_dali.data.ingest import index_data
from bsp_dali.data.videogen import read_frame_index
from bsp_dali.decode.pyav import PyAVReader
from bsp_dali.decode.stage import DecodeFailures, DecodeStage, StageOptions
from bsp_dali.decode.windows import DecodeUnit
from bsp_dali.plan.augment import FULL_BOX, SpatialConfig, apply_cpu
from bsp_dali.plan.planner import plain_plan
from bsp_dali.synth.tables import RecipeTables
from conftest import broken_copy, ffmpeg_frames

SIZE = (24, 24)


class CountingReader:
    """A stand-in frame reader: demo frames, a record of every window read, chosen videos failing."""

    def __init__(self, fail=()):
        self.demo = DemoReader(32, 32)
        self.fail = set(fail)
        self.calls = []

    def read(self, video, frames):
        self.calls.append((video.path, tuple(frames)))
        if video.path in self.fail:
            raise BadVideo(video.path, "stand-in failure")
        return self.demo.read(video, frames)


def demo_stage(reader, **opts):
    index = demo_index(num_classes=3, videos_per_class=4, size=(32, 32))
    planner = Planner(index, SynthesisConfig(), seed=4, spatial=SpatialConfig(size=SIZE))
    return DecodeStage(index, planner, StageOptions(size=SIZE, **opts), reader=reader), index


def test_stage_decodes_the_units_of_a_batch_and_their_tables(tmp_path):
    reader = CountingReader()
    stage, index = demo_stage(reader, num_threads=1)
    batch = stage.decode(0, [0, 1, 2, 3, 4, 5])
    assert [p.index for p in batch.plans] == [0, 1, 2, 3, 4, 5] and stage.route(batch.windows.units[0]) == "cpu"
    assert len(reader.calls) == len(batch.windows.units) == len(batch.stacks) > 0  # one read per unit and window
    for unit, stack, (_, frames) in zip(batch.windows.units, batch.stacks, reader.calls):
        assert frames == tuple(unit.frames)
        raw = DemoReader(32, 32).read(index.videos[unit.video], unit.frames)
        assert np.array_equal(stack, apply_cpu(raw, unit.crop, unit.flip, SIZE))
    tables = RecipeTables.from_windows(batch.plans, batch.windows)
    assert tables.frames_per_source == tuple(u.length for u in batch.windows.units)


def test_a_failing_file_is_banned_its_samples_replanned_and_other_units_reused():
    index = demo_index(num_classes=3, videos_per_class=4, size=(32, 32))
    probe = Planner(index, SynthesisConfig(), seed=4, spatial=SpatialConfig(size=SIZE))
    victim = probe.plan(2, 0).sources[0].path
    reader = CountingReader(fail={victim})
    stage, _ = demo_stage(reader, num_threads=1)
    batch = stage.decode(0, list(range(8)))
    assert [p for p, _ in stage.failures] == [victim] and "stand-in failure" in stage.failures[0][1]
    assert all(s.path != victim for p in batch.plans for s in p.sources)
    # the plans that did not touch the victim are the planner's, and their windows were read once
    for p in batch.plans:
        ref = probe.plan(p.index, 0)
        if all(s.path != victim for s in ref.sources):
            assert p == ref
    # (a replaced sample's other slot may have been read before the ban: that read goes unused)
    reads = [c for c in reader.calls if c[0] != victim]
    assert len(reads) == len(set(reads))
    assert {(index.videos[u.video].path, tuple(u.frames)) for u in batch.windows.units} <= set(reads)
    assert len(reads) <= len(batch.windows.units) + 1
    # no budget: the next failure is fatal, naming the file
    strict, _ = demo_stage(CountingReader(fail={victim}), num_threads=1, max_bad_videos=0)
    with pytest.raises(DecodeFailures, match=victim):
        strict.decode(0, list(range(8)))
    # render (plans from elsewhere) does not replan: it raises the file's error
    with pytest.raises(BadVideo, match="stand-in"):
        strict.render([probe.plan(2, 0)])


def test_stream_yields_the_batches_in_order():
    stage, _ = demo_stage(CountingReader(), num_threads=2)
    batches = [[0, 1], [2, 3], [4, 5]]
    got = [[p.index for p in b.plans] for b in stage.stream(1, batches)]
    assert got == batches


# ---------------------------------------------------------------------------------- DALI on VP9
def dali_stage(index, synthesis=None, size=(32, 48), spatial_mode="train", **opts):
    pytest.importorskip("nvidia.dali")
    planner = Planner(index, synthesis or SynthesisConfig(), seed=2, spatial=SpatialConfig(size=size, mode=spatial_mode))
    opts.setdefault("num_threads", 2)
    return DecodeStage(index, planner, StageOptions(size=size, device="cpu", decoder="dali", **opts))


def test_dali_file_list_windows_match_ffmpeg_frame_by_frame(indexed_vp9, kinetics_vp9):
    pytest.importorskip("nvidia.dali")
    from bsp_dali.decode.dali_readers import DaliFileListReader, file_list_lines, pipeline_batch

    vids = indexed_vp9.videos
    ref = [ffmpeg_frames(kinetics_vp9 / v.path) for v in vids]
    if ref[0] is None:
        pytest.skip("imageio-ffmpeg missing")
    L = 9
    units = [DecodeUnit(0, 3, L, FULL_BOX, False), DecodeUnit(2, vids[2].num_frames - L, L, FULL_BOX, False),
             DecodeUnit(1, 0, L, FULL_BOX, False), DecodeUnit(0, 3, L, FULL_BOX, True),
             DecodeUnit(3, 20, L, FULL_BOX, False), DecodeUnit(1, 30, L, (0.25, 0.0, 0.75, 0.5), False),
             DecodeUnit(4, 11, L, FULL_BOX, False)]
    # 7 windows in pipeline batches of 3: two full runs and one padded with the last window
    reader = DaliFileListReader(indexed_vp9, "experimental", "cpu", L, (64, 96), num_threads=2, max_batch=3)
    assert pipeline_batch(7, 3) == 3 and pipeline_batch(7, 4) == 4 and pipeline_batch(64, 32) == 32
    lines = file_list_lines(indexed_vp9, units, L, 3)
    assert len(lines) == 9 and lines[7].split()[1:] == ["7", "11", "20"] and lines[8].split()[1:] == ["8", "11", "20"]
    out = reader.read_windows(units)
    assert reader.builds == 1 and len(out) == len(units) == 7
    for u, stack in zip(units, out):
        assert stack.shape == (L, 64, 96, 3) and stack.dtype == np.uint8
        if u.crop != FULL_BOX:
            want = apply_cpu(ref[u.video][u.start:u.stop], u.crop, u.flip, (64, 96))
            assert np.abs(stack.astype(int) - want).mean() < 8.0
            continue
        assert [read_frame_index(f[:, ::-1] if u.flip else f) for f in stack] == list(u.frames)
        want = ref[u.video][u.start:u.stop][:, :, ::-1] if u.flip else ref[u.video][u.start:u.stop]
        for f in range(L):  # every frame, not a mean over the window
            assert np.abs(stack[f].astype(int) - want[f]).mean() < 4.0, (u, f)
    assert np.array_equal(out[3], out[0][:, :, ::-1])
    # the same units again: the same pixels (deterministic)
    again = reader.read_windows(units)
    assert len(again) == 7 and all(np.array_equal(a, b) for a, b in zip(out, again))
    with pytest.raises(ValueError, match="length"):
        reader.read_windows([DecodeUnit(0, 0, L + 1, FULL_BOX, False)])


@pytest.fixture()
def broken_vp9(tmp_path, kinetics_vp9):
    """The VP9 data with a file zeroed (DALI cannot open it and silently skips its lines) and one
    with its middle third zeroed (fewer frames than indexed), after indexing."""
    return broken_copy(tmp_path, kinetics_vp9)


def test_dali_reader_blames_exactly_the_broken_files(broken_vp9):
    pytest.importorskip("nvidia.dali")
    from bsp_dali.decode.dali_readers import DaliFileListReader

    index, unopenable, truncated = broken_vp9
    L = 8
    units = [DecodeUnit(v, 30 if v == 4 else 2, L, FULL_BOX, False) for v in (0, 1, 2, 4, 5, 3)]
    out = DaliFileListReader(index, "experimental", "cpu", L, (32, 48), max_batch=4).read_windows(units)
    assert len(out) == len(units) == 6
    bad = {u.video for u, r in zip(units, out) if isinstance(r, BadVideo)}
    assert bad == {1, 4}
    for u, r in zip(units, out):
        if isinstance(r, BadVideo):
            assert r.path.endswith(index.videos[u.video].path) and "DALI (cpu, experimental reader)" in r.reason
        else:
            assert [read_frame_index(f) for f in r] == list(u.frames)


@pytest.mark.parametrize("pipelines, ahead", [(1, 1), (2, 2)])
def test_dali_stage_replaces_samples_of_broken_files(broken_vp9, pipelines, ahead):
    index, unopenable, truncated = broken_vp9
    cfg = SynthesisConfig(types=("same_speed", "diff_speed"))
    stage = dali_stage(index, cfg, pipelines=pipelines, ahead=ahead)
    clean = Planner(index, cfg, seed=2, spatial=SpatialConfig(size=(32, 48)))
    batches = [list(range(b * 4, b * 4 + 4)) for b in range(6)]
    out = list(stage.stream(0, batches))
    assert [[p.index for p in b.plans] for b in out] == batches
    used = {s.path for b in out for p in b.plans for s in p.sources}
    assert not used & {unopenable.path, truncated.path}
    assert sorted(p for p, _ in stage.failures) == sorted({unopenable.path, truncated.path} & {
        s.path for i in range(24) for s in clean.plan(i, 0).sources})
    assert len(stage.failures) == 2  # both were planned (and found) within these 24 samples
    for b in out:
        for p, stack_ids in zip(b.plans, b.windows.slots):
            ref = clean.plan(p.index, 0)
            if not {s.path for s in ref.sources} & {unopenable.path, truncated.path}:
                assert p == ref  # samples that did not touch a broken file are unchanged
            for s, u in enumerate(stack_ids):
                unit, stack = b.windows.units[u], b.stacks[u]
                assert stage.route(unit) == "fixed" and unit.length == stage.length
                assert stack.shape[0] == unit.length and stack.std() > 0  # never a frame of zeros
    stage.close()


def test_chunked_pipelines_give_the_synchronous_batches(indexed_vp9):
    sync = dali_stage(indexed_vp9, pipelines=1, ahead=1)
    ahead = dali_stage(indexed_vp9, pipelines=2, ahead=3)
    batches = [list(range(b * 3, b * 3 + 3)) for b in range(5)]
    pairs = list(zip(sync.stream(0, batches), ahead.stream(0, batches)))
    assert len(pairs) == 5 and [[p.index for p in a.plans] for a, _ in pairs] == batches
    for a, b in pairs:
        assert a.plans == b.plans and a.windows == b.windows
        assert len(a.stacks) == len(b.stacks) == len(a.windows.units) > 0
        assert all(np.array_equal(x, y) for x, y in zip(a.stacks, b.stacks))
    assert len(ahead._pool.readers) == 2 and sum(r.builds for r in ahead._pool.readers) == 2
    sync.close()
    ahead.close()


def test_windows_longer_than_the_fixed_length_go_to_the_per_source_decoder(indexed_vp9, kinetics_vp9):
    # tau=1: windows of 2 frames for the file-list reader; extract-style plans of 20 frames do not fit
    stage = dali_stage(indexed_vp9, SynthesisConfig(tau=1, types=("same_speed",)), size=(64, 96))
    assert stage.length == 2
    v = indexed_vp9.videos[2]
    plans = [plain_plan(indexed_vp9, 2, list(range(10, 30))), plain_plan(indexed_vp9, 0, [5, 6], sample_index=1)]
    batch = stage.render(plans)
    routes = [stage.route(u) for u in batch.windows.units]
    assert routes == ["variable", "fixed"]
    ref = ffmpeg_frames(kinetics_vp9 / v.path)
    if ref is not None:
        for f in range(20):
            assert np.abs(batch.stacks[0][f].astype(int) - ref[10 + f]).mean() < 4.0
    assert [read_frame_index(f) for f in batch.stacks[1]] == [5, 6]
    # H.264 on the CPU stays with PyAV whatever the decoder
    stage.close()


def test_h264_on_the_cpu_goes_to_pyav(indexed_h264):
    stage = dali_stage(indexed_h264)
    batch = stage.decode(0, [0, 1, 2])
    assert {stage.route(u) for u in batch.windows.units} == {"cpu"}
    u = batch.windows.units[0]
    raw = PyAVReader(indexed_h264).read(indexed_h264.videos[u.video], u.frames)
    assert np.array_equal(batch.stacks[0], apply_cpu(raw, u.crop, u.flip, (32, 48)))


def test_bad_stage_options_are_named(indexed_vp9):
    pytest.importorskip("nvidia.dali")
    with pytest.raises(ValueError, match="dali_reader"):
        dali_stage(indexed_vp9, dali_reader="fast")
    with pytest.raises(ValueError, match="GPU only"):
        dali_stage(indexed_vp9, dali_reader="legacy")
    with pytest.raises(ValueError, match="pipelines"):
        dali_stage(indexed_vp9, pipelines=0)
    with pytest.raises(ValueError, match="ahead"):
        dali_stage(indexed_vp9, ahead=0)


@pytest.mark.parametrize("kind", ["legacy", "experimental"])
def test_reader_arguments_exist_in_dalis_schemas(kind):
    """The GPU-only legacy reader cannot run here: its arguments are checked against DALI's schema."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import backend

    from bsp_dali.decode.dali_readers import READER_SCHEMAS, DaliReaderKind, reader_arguments

    k = DaliReaderKind.parse(kind)
    schema = backend.GetSchema(READER_SCHEMAS[k])
    args = reader_arguments(k, "gpu", "/tmp/list.txt", 8)
    assert "gpu" in schema.GetSupportedBackends() or k is DaliReaderKind.EXPERIMENTAL
    for name in args:
        if name not in ("device", "name"):  # operator-generic arguments
            assert schema.HasArgument(name), (kind, name)
    assert not schema.HasArgument("no_such_argument")


def test_a_path_with_a_space_goes_to_the_per_source_decoder(tmp_path, kinetics_vp9):
    pytest.importorskip("nvidia.dali")
    root = tmp_path / "with space"
    shutil.copytree(kinetics_vp9, root, ignore=shutil.ignore_patterns("bsp-dali-manifest*"))
    index = index_data(root, min_frames=8, workers=1).index
    stage = dali_stage(index, SynthesisConfig(types=("same_speed",)))
    batch = stage.decode(0, [0, 1])
    assert {stage.route(u) for u in batch.windows.units} == {"variable"}
    assert len(batch.stacks) == len(batch.windows.units) > 0
    for u, s in zip(batch.windows.units, batch.stacks):
        assert s.shape[0] == u.length
    stage.close()


def test_videos_shorter_than_the_fixed_length_are_decoded_not_excluded(indexed_vp9):
    """Policy: a video shorter than L gets variable-length units from fn.decoders.video."""
    import dataclasses

    from bsp_dali.data.index import DatasetIndex

    # the index says video 2 has 12 frames (the file has more: its first 12 are real frames)
    videos = [dataclasses.replace(v, num_frames=12) if k == 2 else v for k, v in enumerate(indexed_vp9.videos)]
    index = DatasetIndex(videos, indexed_vp9.classes, root=indexed_vp9.root)
    stage = dali_stage(index, SynthesisConfig(types=("same_speed",)), size=(64, 96))
    assert stage.length == 8  # same_speed only: T = 8 frames
    stage = dali_stage(index, SynthesisConfig(types=("same_speed", "diff_speed")), size=(64, 96),
                       spatial_mode="resize")  # whole frames: their index bands stay readable
    assert stage.length == 14 > index.videos[2].num_frames
    seen = set()
    for b in range(6):
        batch = stage.decode(0, list(range(b * 4, b * 4 + 4)))
        assert len(batch.stacks) == len(batch.windows.units) > 0
        for u, s in zip(batch.windows.units, batch.stacks):
            route = stage.route(u)
            assert route == ("variable" if u.video == 2 else "fixed")
            seen.add(route)
            assert [read_frame_index(f[:, ::-1] if u.flip else f) for f in s] == list(u.frames)
    assert seen == {"variable", "fixed"}
    stage.close()


def test_batches_ahead_counts_the_chunks_a_file_list_stream_holds(indexed_vp9):
    """A benchmark's warm-up drains prefetch + what the stage holds in flight (BSPIterator.depth)."""
    listed = dali_stage(indexed_vp9, pipelines=3, ahead=2)
    assert listed.batches_ahead == 6  # 3 pipelines x chunks of 2 batches
    assert dali_stage(indexed_vp9, dali_reader="decoder").batches_ahead == 0  # decoded on demand


# ---------------------------------------------------------------------------------- PyAV in worker processes
@pytest.fixture()
def broken_h264(tmp_path, kinetics_h264):
    """The H.264 data with a file zeroed and one with its middle third zeroed, after indexing."""
    return broken_copy(tmp_path, kinetics_h264)


def pyav_stage(index, cpu_workers, cfg=None, **opts):
    planner = Planner(index, cfg or SynthesisConfig(), seed=2, spatial=SpatialConfig(size=(32, 48)))
    return DecodeStage(index, planner, StageOptions(size=(32, 48), device="cpu", decoder="pyav", num_threads=2,
                                                    cpu_workers=cpu_workers, **opts))


def test_worker_processes_replace_samples_of_broken_files_like_threads(broken_h264):
    index, unopenable, damaged = broken_h264
    cfg = SynthesisConfig(types=("same_speed", "diff_class"))
    procs, threads = pyav_stage(index, "processes", cfg), pyav_stage(index, "threads", cfg)
    assert "worker process" in procs.description and "thread" in threads.description
    clean = Planner(index, cfg, seed=2, spatial=SpatialConfig(size=(32, 48)))
    batches = [list(range(b * 4, b * 4 + 4)) for b in range(6)]
    broken = {unopenable.path, damaged.path}
    try:
        got = list(procs.stream(0, batches))  # the next batch's units go to the workers ahead
        ref = list(threads.stream(0, batches))
        assert [[p.index for p in b.plans] for b in got] == batches
        assert not broken & {s.path for b in got for p in b.plans for s in p.sources}
        planned = broken & {s.path for i in range(24) for s in clean.plan(i, 0).sources}
        assert planned and sorted(p for p, _ in procs.failures) == sorted(planned)
        assert procs.failures == threads.failures
        assert len(got) == len(ref) == 6
        for a, b in zip(got, ref):  # the same replacements, windows and pixels either way
            assert a.plans == b.plans and a.windows == b.windows
            assert len(a.stacks) == len(b.stacks) == len(a.windows.units) > 0
            assert all(np.array_equal(x, y) for x, y in zip(a.stacks, b.stacks))
            for p in a.plans:
                if not {s.path for s in clean.plan(p.index, 0).sources} & broken:
                    assert p == clean.plan(p.index, 0)
        # no budget: the first broken file stops the run, named
        strict = pyav_stage(index, "processes", cfg, max_bad_videos=0)
        with pytest.raises(DecodeFailures, match="|".join(sorted(planned))):
            list(strict.stream(0, batches))
        strict.close()
    finally:
        procs.close()
        threads.close()


def test_unknown_cpu_workers_are_named(indexed_h264):
    with pytest.raises(ValueError, match="cpu_workers"):
        pyav_stage(indexed_h264, "fibers")
