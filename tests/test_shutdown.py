"""No decode worker outlives its iterator and no shared memory is left behind: after Ctrl-C, after
an exception in the training loop (caught or not), when an iterator is dropped mid-epoch, and when
the training process is killed outright (workers notice, the next reader sweeps the segments)."""

import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bsp_dali.decode.procreader import shm_dir, sweep_stale_segments
from bsp_dali.iterator import BSPIterator
from bsp_dali.plan.augment import SpatialConfig
from conftest import alive

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # subprocesses that import PyTorch: a few seconds each

SCRIPT = r'''
import json, sys, time
sys.path.insert(0, {root!r})
from bsp_dali.data.ingest import load_data
from bsp_dali.iterator import BSPIterator
from bsp_dali.plan.augment import SpatialConfig

index = load_data({data!r})
mode = {mode!r}


def loader():
    return BSPIterator(index, batch_size=2, epoch_size=10**6, device="cpu", spatial=SpatialConfig(size=(32, 48)),
                       num_threads=2, decoder="pyav")


def report(it, **extra):
    r = it.stage.cpu_reader
    print(json.dumps(dict(pids=r.pids, names=r.arena.names, **extra)), flush=True)


def train(fail):
    it = loader()
    for k, batch in enumerate(it):
        if k == 2:
            report(it)
            if fail:
                raise ValueError("a bug in the training loop")
        time.sleep(0.02)  # the training step


if mode == "ctrl-c":
    train(fail=False)
elif mode == "raise-uncaught":
    train(fail=True)
elif mode == "raise-caught":
    try:
        train(fail=True)
    except ValueError:
        pass
    print(json.dumps(dict(caught=True)), flush=True)
    time.sleep(3)  # the test looks at the workers and segments while this process still runs
elif mode == "sigkill":
    it = loader()
    next(iter(it))
    report(it)
    time.sleep(600)
'''


def wait_gone(pids, names, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(alive(p) for p in pids) and not any((shm_dir() / n).exists() for n in names):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture()
def manifest(tmp_path, indexed_h264):
    path = tmp_path / "m.json"
    indexed_h264.save(path)
    return path


def start(tmp_path, manifest, mode):
    script = tmp_path / f"{mode}.py"
    script.write_text(SCRIPT.format(root=str(ROOT), data=str(manifest), mode=mode))
    # a session of its own: signals can go to its whole process group, as a terminal's Ctrl-C does
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def first_report(proc):
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"the script ended early: {proc.stderr.read()[-3000:]}")
    rep = json.loads(line)
    assert len(rep["pids"]) == 2 and rep["names"] and all(alive(p) for p in rep["pids"])
    assert all((shm_dir() / n).exists() for n in rep["names"])
    return rep


@pytest.mark.parametrize("group", [True, False], ids=["terminal-ctrl-c", "sigint-to-the-process"])
def test_ctrl_c_leaves_no_worker_and_no_shared_memory(tmp_path, manifest, group):
    proc = start(tmp_path, manifest, "ctrl-c")
    try:
        rep = first_report(proc)
        if group:
            os.killpg(proc.pid, signal.SIGINT)  # the parent and its workers, like Ctrl-C in a terminal
        else:
            os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert wait_gone(rep["pids"], rep["names"])


def test_an_uncaught_exception_in_the_training_loop_leaves_nothing(tmp_path, manifest):
    proc = start(tmp_path, manifest, "raise-uncaught")
    rep = first_report(proc)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "a bug in the training loop" in err
    assert wait_gone(rep["pids"], rep["names"])


def test_a_caught_exception_stops_the_workers_while_the_process_goes_on(tmp_path, manifest):
    proc = start(tmp_path, manifest, "raise-caught")
    try:
        rep = first_report(proc)
        assert json.loads(proc.stdout.readline()) == {"caught": True}
        # the loader went out of scope with the exception: its workers and segments are gone now,
        # while the process still runs
        assert proc.poll() is None
        assert wait_gone(rep["pids"], rep["names"], timeout=2.5)
        assert proc.poll() is None
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_a_killed_parent_leaves_no_worker_and_the_next_reader_sweeps_its_segments(tmp_path, manifest):
    proc = start(tmp_path, manifest, "sigkill")
    rep = first_report(proc)
    proc.kill()  # no chance to clean up
    proc.communicate(timeout=60)
    end = time.monotonic() + 15
    while any(alive(p) for p in rep["pids"]) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(alive(p) for p in rep["pids"])  # they saw their parent go
    assert all((shm_dir() / n).exists() for n in rep["names"])  # nobody unlinked these
    assert set(rep["names"]) <= set(sweep_stale_segments())
    assert not any((shm_dir() / n).exists() for n in rep["names"])


def test_an_iterator_dropped_mid_epoch_stops_its_workers_and_frees_its_memory(indexed_h264):
    it = BSPIterator(indexed_h264, batch_size=2, epoch_size=100, device="cpu", spatial=SpatialConfig(size=(32, 48)),
                     num_threads=2, decoder="pyav")
    next(iter(it))
    reader = it.stage.cpu_reader
    pids, names = reader.pids, reader.arena.names
    threads = [it._worker.thread, it._worker.synth]
    assert len(pids) == 2 and names
    del it, reader
    assert wait_gone(pids, names, timeout=10)  # reference counting alone: no gc.collect() needed
    assert not any(t.is_alive() for t in threads)
    gc.collect()
