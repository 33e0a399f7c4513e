"""The window reader over worker processes: the same pixels as the thread reader, the lifetime of
its shared-memory blocks, bad files, dying workers, stale segments."""

import gc
import os
import signal
import time

import numpy as np
import pytest

from bsp_dali import BadVideo, Planner, SynthesisConfig
from bsp_dali.data.videogen import read_frame_index
from bsp_dali.decode.procreader import SHM_PREFIX, Arena, ProcessWindowReader, shm_dir, sweep_stale_segments
from bsp_dali.decode.pyav import PyAVReader
from bsp_dali.decode.readers import CPUWindowReader
from bsp_dali.decode.windows import DecodeUnit, plan_windows
from bsp_dali.plan.augment import FULL_BOX, SpatialConfig
from conftest import alive

SIZE = (32, 48)


def units_of(index, n=12, seed=0):
    planner = Planner(index, SynthesisConfig(), seed=seed, spatial=SpatialConfig(size=SIZE))
    return list(plan_windows(planner.plan_many(range(n)), index.num_frames).units)


@pytest.fixture()
def procreader():
    """ProcessWindowReader(index, SIZE, ...) for a test, closed after it whatever happens."""
    made = []

    def make(index, size, **kw):
        made.append(ProcessWindowReader(index, size, **kw))
        return made[-1]

    yield make
    for reader in made:
        reader.close()


@pytest.mark.parametrize("data", ["indexed_h264", "indexed_vp9"])
def test_same_pixels_as_the_thread_reader(data, request, procreader):
    index = request.getfixturevalue(data)
    units = units_of(index)
    units += [DecodeUnit(0, 3, 5, FULL_BOX, False), DecodeUnit(1, 0, 4, (0.1, 0.2, 0.9, 0.7), True)]
    reader = procreader(index, SIZE, workers=2)
    got = reader.read_windows(units)
    want = CPUWindowReader(index, PyAVReader(index), SIZE, threads=2).read_windows(units)
    for u, a, b in zip(units, got, want):
        assert a.shape == (u.length, *SIZE, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b), u
    full = got[-2]  # full frames, no resize: the frame index pattern survives
    assert [read_frame_index(f) for f in full] == list(range(3, 8))
    st = reader.stats
    assert st.units == len(units) and st.frames == sum(u.length for u in units) and st.decode_s > 0
    assert len(reader.pids) == 2


def test_a_block_returns_to_the_ring_only_when_no_view_of_it_is_left(indexed_h264, procreader):
    reader = procreader(indexed_h264, SIZE, workers=1)
    units = units_of(indexed_h264, 4)
    stacks = reader.read_windows(units)
    arena = reader.arena
    used = arena.used_bytes
    assert used >= sum(s.nbytes for s in stacks)
    keep = stacks[0][1:3, :, ::-1]  # a view of a view
    frozen = keep.copy()
    addr = stacks[0].__array_interface__["data"][0]
    del stacks
    gc.collect()
    assert 0 < arena.used_bytes < used  # the others are back, the viewed block is not
    # new windows never land on the block a view still reads
    again = reader.read_windows(units * 3)
    for s in again:
        lo = s.__array_interface__["data"][0]
        assert not (lo <= addr < lo + s.nbytes) and not (addr <= lo < addr + units[0].length * 32 * 48 * 3)
    assert np.array_equal(keep, frozen)
    del again, keep, s
    gc.collect()
    assert arena.used_bytes == 0


def test_cancelled_requests_free_their_blocks(indexed_h264, procreader):
    reader = procreader(indexed_h264, SIZE, workers=1)
    units = units_of(indexed_h264, 8)
    req = reader.submit(units)
    req.cancel()
    assert req.cancelled()
    reader.read_windows(units[:1])  # FIFO: once this is back, every earlier unit is answered
    gc.collect()
    assert reader.arena.used_bytes == 0


def test_a_bad_file_is_a_decode_error_naming_it_and_the_workers_go_on(tmp_path, indexed_h264, kinetics_h264,
                                                                      procreader):
    import shutil

    from bsp_dali.data.index import DatasetIndex

    root = tmp_path / "data"
    shutil.copytree(kinetics_h264, root)
    index = DatasetIndex(indexed_h264.videos, indexed_h264.classes, root=str(root))
    (root / index.videos[1].path).write_bytes(b"\x00" * 3000)
    reader = procreader(index, SIZE, workers=2)
    units = [DecodeUnit(v, 2, 6, FULL_BOX, False) for v in range(4)]
    out = reader.read_windows(units)
    assert isinstance(out[1], BadVideo) and out[1].path.endswith(index.videos[1].path)
    assert "decoding failed" in out[1].reason
    late = reader.read_windows([DecodeUnit(0, 10 ** 4, 2, FULL_BOX, False)])[0]  # past the end
    assert isinstance(late, BadVideo) and "the video has" in late.reason
    assert all(isinstance(s, np.ndarray) for k, s in enumerate(out) if k != 1)


def test_a_worker_killed_mid_window_is_replaced_and_the_window_decoded_again(indexed_h264, procreader):
    reader = procreader(indexed_h264, SIZE, workers=1)
    units = units_of(indexed_h264, 6)
    want = CPUWindowReader(indexed_h264, PyAVReader(indexed_h264), SIZE).read_windows(units)
    reader.read_windows(units[:1])
    victim = reader.pids[0]
    req = reader.submit(units)
    os.kill(victim, signal.SIGKILL)
    got = req.result(timeout=120)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)
    assert reader.stats.restarts == 1 and reader.pids and reader.pids[0] != victim
    assert not alive(victim)


def test_close_stops_the_workers_and_unlinks_the_segments_while_views_stay_readable(indexed_h264):
    reader = ProcessWindowReader(indexed_h264, SIZE, workers=2)
    stacks = reader.read_windows(units_of(indexed_h264, 4))
    pids, names = reader.pids, reader.arena.names
    copy = [s.copy() for s in stacks]
    assert names and all((shm_dir() / n).exists() for n in names)
    reader.close()
    assert not any(alive(p) for p in pids)
    assert not any((shm_dir() / n).exists() for n in names)
    assert all(np.array_equal(a, b) for a, b in zip(stacks, copy))  # still mapped until they go
    # a closed reader starts again on the next request
    again = reader.read_windows(units_of(indexed_h264, 1))
    assert isinstance(again[0], np.ndarray) and reader.pids and set(reader.pids).isdisjoint(pids)
    reader.close()


def test_segments_of_dead_processes_are_swept(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f"{SHM_PREFIX}{pid}-abc-0"
    mine = tmp_path / f"{SHM_PREFIX}{os.getpid()}-abc-0"
    other = tmp_path / "unrelated-file"
    for p in (stale, mine, other):
        p.write_bytes(b"x")
    assert sweep_stale_segments(tmp_path) == [stale.name]
    assert not stale.exists() and mine.exists() and other.exists()


def test_a_full_shm_falls_back_to_files_in_the_temp_dir(tmp_path, monkeypatch, caplog):
    import errno

    calls = []
    real = os.posix_fallocate

    def full_once(fd, off, n):
        calls.append(n)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, off, n)

    monkeypatch.setattr(os, "posix_fallocate", full_once)
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    arena = Arena(1 << 16, directory=shm_dir())
    try:
        s, off = arena.alloc(1000)
        assert arena.path(s).startswith(str(tmp_path)) and "full" in caplog.text
        v = arena.view(s, off, (10, 100))
        v[:] = 7
        assert v.sum() == 7000
    finally:
        arena.close()
    assert not list(tmp_path.glob(f"{SHM_PREFIX}*"))


def test_bad_arguments_are_named(indexed_h264):
    with pytest.raises(ValueError, match="workers"):
        ProcessWindowReader(indexed_h264, SIZE, workers=0)


def test_workers_ignore_ctrl_c_sent_to_the_group(indexed_h264, procreader):
    reader = procreader(indexed_h264, SIZE, workers=1)
    reader.read_windows(units_of(indexed_h264, 1))
    pid = reader.pids[0]
    os.kill(pid, signal.SIGINT)
    time.sleep(0.5)
    assert alive(pid)
    assert isinstance(reader.read_windows(units_of(indexed_h264, 1))[0], np.ndarray)


def old_apply_cpu(frames, box, flip, size):
    """apply_cpu as it was before Pillow flipped and packed the frames: the oracle."""
    from PIL import Image

    F, H, W, _ = frames.shape
    y0, x0, y1, x1 = box
    if box == FULL_BOX and (H, W) == size:
        out = frames.copy()
    else:
        out = np.stack([np.asarray(Image.fromarray(f).resize((size[1], size[0]), Image.BILINEAR,
                                                             box=(x0 * W, y0 * H, x1 * W, y1 * H))) for f in frames])
    return np.ascontiguousarray(out[:, :, ::-1] if flip else out)


def test_the_frame_transform_gives_the_pixels_it_gave_before():
    """transform_frame_cpu (Pillow flips and packs, one copy into the slot) against the NumPy flip
    of Pillow's arrays it replaced: every kind of box, both flips, odd sizes, a strided slot."""
    from bsp_dali.plan.augment import transform_frame_cpu

    rng = np.random.default_rng(3)
    boxes = [FULL_BOX, (0.1, 0.15, 0.8, 0.9), (0.0, 0.0, 0.3, 0.25), (0.5, 0.2, 1.0, 1.0)]
    for trial in range(6):
        H, W = int(rng.integers(9, 120)), int(rng.integers(9, 120))
        frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        for box in boxes:
            for size in ((H, W), (24, 41)):
                for flip in (False, True):
                    slots = np.zeros((3, *size, 3), np.uint8)
                    transform_frame_cpu(frame, box, flip, size, slots[1])
                    assert np.array_equal(slots[1], old_apply_cpu(frame[None], box, flip, size)[0]), (box, size, flip)
                    assert not slots[0].any() and not slots[2].any()


@pytest.mark.parametrize("fmt", ["yuv420p", "yuvj420p", "yuv444p"])
def test_the_workers_transform_of_a_decoded_frame_is_that_of_its_rgb24_array(fmt):
    import av

    from bsp_dali.plan.augment import transform_av_frame

    rng = np.random.default_rng(4)
    for H, W in ((256, 340), (64, 96), (38, 70)):
        frame = av.VideoFrame(W, H, fmt)
        for plane in frame.planes:
            plane.update(rng.integers(0, 256, plane.buffer_size, dtype=np.uint8).tobytes())
        rgb = frame.to_ndarray(format="rgb24")
        for box in (FULL_BOX, (0.1, 0.15, 0.8, 0.9), (0.2, 0.0, 1.0, 1.0)):
            for size in ((H, W), (24, 40)):
                for flip in (False, True):
                    out = np.zeros((*size, 3), np.uint8)
                    transform_av_frame(frame, box, flip, size, out)
                    assert np.array_equal(out, old_apply_cpu(rgb[None], box, flip, size)[0]), (H, W, box, size, flip)
