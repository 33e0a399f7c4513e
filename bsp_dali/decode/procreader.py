"""Decode windows in worker processes, into shared memory: the CPU's window reader.

    reader = ProcessWindowReader(index, size=(224, 224), workers=2)
    stacks = reader.read_windows(units)   # FHWC uint8 NumPy views into shared memory, or BadVideo
    del stacks                            # their memory goes back to the ring
    reader.close()

Why processes: decoding a window with PyAV is FFmpeg work (which releases the GIL) plus Python work
per frame (iterating frames, ``to_ndarray``, the Pillow resize calls) that serializes on the GIL
when threads share one interpreter. Persistent worker processes (default: one per core, each
decoding with one FFmpeg thread) never contend, and nothing is pickled on the way back: each
worker writes the window's transformed frames straight into a block of a shared-memory arena, and
the consumer gets NumPy views of those blocks.

**Lifetime of a block.** The reader allocates a block for a unit when it hands the unit to a
worker; the worker writes the frames and answers; the reader returns a NumPy view of the block. The
block goes back to the arena when the view and every array derived from it are gone (a
``weakref.finalize`` on the view: views of a view keep it alive, NumPy's ``base``), never before,
so a block cannot be reused while anything can still read it. The decode stage drops its
references explicitly once a batch is synthesized (:meth:`bsp_dali.decode.stage.DecodedBatch.release`),
which in CPython frees the blocks at that moment. A block handed to a worker is never freed while
that worker may still write to it (a cancelled request frees its blocks when the worker answers,
or dies).

**Start method.** Workers are started with :mod:`subprocess` (``python -c`` importing this
module), each with one end of a socket pair as its channel, not with :mod:`multiprocessing`:
``fork`` from a parent that runs threads (the iterator's prefetch thread, PyTorch's OpenMP pool, a
CUDA context) can copy a held lock or an unusable runtime into the child; ``spawn`` and
``forkserver`` re-import the parent's ``__main__``, which runs a training script again if its loop
is not under ``if __name__ == "__main__":``. A fresh interpreter that imports only NumPy, PyAV and
Pillow has neither problem and starts in a fraction of a second, once per run.

**Shutdown.** Workers ignore SIGINT (Ctrl-C reaches the whole process group; the parent decides),
exit when the channel closes or the parent dies (they poll the parent's pid), and are stopped by
:meth:`close`, by a ``weakref.finalize`` when the reader is collected, and at interpreter exit
(Ctrl-C, an exception that ends the script). Segments live in ``/dev/shm`` as
``bsp-dali-<pid>-...`` files: unlinked on close; segments of processes that no longer exist (a
parent killed with SIGKILL) are removed when the next reader starts.

A worker that dies while decoding a unit (a crash in FFmpeg, the OOM killer) fails that unit with
a :class:`~bsp_dali.decode.pyav.BadVideo` naming the file, so the stage bans it like any bad file,
and is replaced.
"""

from __future__ import annotations

import errno
import itertools
import logging
import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.index import BadVideo, DatasetIndex
from .windows import DecodeUnit

log = logging.getLogger(__name__)

SHM_PREFIX = "bsp-dali-"
SEGMENT_BYTES = 64 << 20  # arena segments (a unit larger than this gets a segment of its own)
ALIGN = 64
IN_FLIGHT_PER_WORKER = 2  # units queued per worker: one decoding, one waiting in its channel
WORKER_START_S = 60.0  # a worker that is not ready by then is an error
STOP_GRACE_S = 3.0  # close(): how long workers get to exit before SIGKILL
PARENT_POLL_S = 1.0  # how often an idle worker checks that its parent is alive


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def shm_dir() -> Path:
    """Where segments live: /dev/shm (RAM) where it exists, else the temporary directory."""
    d = Path("/dev/shm")
    return d if d.is_dir() and os.access(d, os.W_OK) else Path(tempfile.gettempdir())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_segments(directory: Path | None = None) -> list[str]:
    """Remove segments left by processes that no longer exist (killed before they could clean up).
    Returns the names removed."""
    removed = []
    directory = directory or shm_dir()
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(SHM_PREFIX):
            continue
        try:
            pid = int(name[len(SHM_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            try:
                os.unlink(directory / name)
                removed.append(name)
            except OSError:
                pass
    return removed


# ---------------------------------------------------------------------------------- the arena
class _Segment:
    def __init__(self, path: Path, size: int):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, size)  # reserve now: a full tmpfs fails here, not with SIGBUS later
            except AttributeError:  # pragma: no cover - not Linux
                os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        os.close(fd)
        self.path, self.size = path, size
        self.free: list[tuple[int, int]] = [(0, size)]  # (offset, size), sorted by offset

    def alloc(self, n: int) -> int | None:
        for k, (off, sz) in enumerate(self.free):
            if sz >= n:
                if sz == n:
                    del self.free[k]
                else:
                    self.free[k] = (off + n, sz - n)
                return off
        return None

    def release(self, off: int, n: int) -> None:
        free = self.free
        k = 0
        while k < len(free) and free[k][0] < off:
            k += 1
        free.insert(k, (off, n))
        if k + 1 < len(free) and off + n == free[k + 1][0]:  # merge with the next
            free[k] = (off, n + free[k + 1][1])
            del free[k + 1]
        if k > 0 and free[k - 1][0] + free[k - 1][1] == off:  # and with the previous
            free[k - 1] = (free[k - 1][0], free[k - 1][1] + free[k][1])
            del free[k]

    @property
    def used(self) -> int:
        return self.size - sum(sz for _, sz in self.free)


class Arena:
    """Blocks of shared memory for decoded windows: segments (files in ``shm_dir()``, mapped here
    and in the workers) carved first-fit; a segment is added when no free block fits. Thread-safe:
    blocks are freed by whichever thread drops the last view of one."""

    def __init__(self, segment_bytes: int = SEGMENT_BYTES, directory: Path | None = None):
        self.segment_bytes = int(segment_bytes)
        self.directory = directory or shm_dir()
        self.prefix = f"{SHM_PREFIX}{os.getpid()}-{id(self):x}-"
        self.segments: list[_Segment | None] = []
        self._lock = threading.Lock()
        self._serial = itertools.count()
        self.closed = False

    def alloc(self, nbytes: int) -> tuple[int, int]:
        """(segment, offset) of a free block of at least ``nbytes``."""
        n = max(ALIGN, -(-int(nbytes) // ALIGN) * ALIGN)
        with self._lock:
            if self.closed:
                raise RuntimeError("the shared-memory arena is closed")
            for s, seg in enumerate(self.segments):
                if seg is not None:
                    off = seg.alloc(n)
                    if off is not None:
                        return s, off
            seg = self._new_segment(max(self.segment_bytes, n))
            self.segments.append(seg)
            off = seg.alloc(n)
            assert off is not None
            return len(self.segments) - 1, off

    def _new_segment(self, size: int) -> _Segment:
        path = self.directory / f"{self.prefix}{next(self._serial)}"
        try:
            return _Segment(path, size)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.ENOMEM) or self.directory == Path(tempfile.gettempdir()):
                raise
            log.warning("%s is full (%s); decoded windows go to files in %s instead", self.directory, e,
                        tempfile.gettempdir())
            self.directory = Path(tempfile.gettempdir())
            return _Segment(self.directory / path.name, size)

    def free(self, s: int, off: int, nbytes: int) -> None:
        n = max(ALIGN, -(-int(nbytes) // ALIGN) * ALIGN)
        with self._lock:
            seg = self.segments[s] if s < len(self.segments) else None
            if seg is not None:
                seg.release(off, n)

    def path(self, s: int) -> str:
        seg = self.segments[s]
        assert seg is not None
        return str(seg.path)

    def view(self, s: int, off: int, shape: tuple[int, ...]) -> np.ndarray:
        """A NumPy view of a block (uint8); the block is freed when the view and its views die."""
        seg = self.segments[s]
        assert seg is not None
        count = int(np.prod(shape))
        # the finalizer watches the array made from the buffer: every view derived from the result
        # has it as its ``base`` (NumPy collapses view chains down to it, not further: its own base
        # is the mmap), so it dies with the last of them
        root = np.frombuffer(seg.map, np.uint8, count=count, offset=off)
        fin = weakref.finalize(root, self.free, s, off, count)
        fin.atexit = False
        return root.reshape(shape)

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(seg.used for seg in self.segments if seg is not None)

    @property
    def names(self) -> list[str]:
        return [seg.path.name for seg in self.segments if seg is not None]

    def close(self) -> None:
        """Unlink every segment (no file is left behind); a segment's memory stays mapped as long as
        views of it exist, and is unmapped with the last one."""
        with self._lock:
            self.closed = True
            segments, self.segments = self.segments, [None] * len(self.segments)
        for seg in segments:
            if seg is None:
                continue
            try:
                os.unlink(seg.path)
            except OSError:
                pass
            try:
                seg.map.close()
            except BufferError:  # views still exist: unmapped when they go
                pass


# ---------------------------------------------------------------------------------- the worker
def _worker_main(fd: int) -> None:
    """Entry point of a worker process: decode the units sent over the channel into the arena."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    parent = os.getppid()
    conn = Connection(fd)
    maps: dict[str, mmap.mmap] = {}
    from ..plan.augment import transform_av_frame
    from .pyav import WindowStats, read_window

    conn.send(("ready", os.getpid()))
    while True:
        try:
            if not conn.poll(PARENT_POLL_S):
                if os.getppid() != parent:
                    return
                continue
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        _, task_id, spec = msg
        (path, video, first, last, crop, flip, size, seg_path, offset, skip_nonref) = spec
        t0 = time.thread_time()
        stats = WindowStats()
        spent = [0.0]
        error = None
        try:
            m = maps.get(seg_path)
            if m is None:
                with open(seg_path, "r+b") as fh:
                    m = maps[seg_path] = mmap.mmap(fh.fileno(), 0)
            length = last - first + 1
            out = np.frombuffer(m, np.uint8, count=length * size[0] * size[1] * 3,
                                offset=offset).reshape(length, size[0], size[1], 3)
            seen = np.zeros(length, bool)

            def on_frame(n: int, frame: Any) -> None:
                t = time.thread_time()
                transform_av_frame(frame, crop, flip, size, out[n - first])
                seen[n - first] = True
                spent[0] += time.thread_time() - t

            read_window(path, video, first, last, on_frame, threads=1, skip_nonref=skip_nonref, stats=stats)
            del out
            if not seen.all():
                missing = (np.flatnonzero(~seen) + first).tolist()
                error = (f"frames {missing[:5]}{'...' if len(missing) > 5 else ''} could not be decoded "
                         f"(the stream ended early)")
        except BadVideo as e:
            error = e.reason
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the worker
            error = f"{type(e).__name__}: {e}"
        total = time.thread_time() - t0
        try:
            conn.send(("done", task_id, error, (stats.decoded, stats.fallbacks, total - spent[0], spent[0])))
        except (EOFError, OSError):
            return


# ---------------------------------------------------------------------------------- the parent
@dataclass
class ReaderStats:
    """What the workers did: units, frames delivered and decoded, plain-path fallbacks, worker CPU
    seconds (decoding, and converting + resizing + writing), workers restarted."""

    units: int = 0
    frames: int = 0
    decoded: int = 0
    fallbacks: int = 0
    decode_s: float = 0.0
    transform_s: float = 0.0
    restarts: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Request:
    """The answer to :meth:`ProcessWindowReader.submit`: ``result()`` waits for every unit (a view or a
    BadVideo each, in the order given); ``cancel()`` gives up on the rest."""

    def __init__(self, n: int):
        self.results: list[Any] = [None] * n
        self.remaining = n
        self.done = threading.Event()
        self.dropped = False
        self.error: BaseException | None = None
        if n == 0:
            self.done.set()

    def result(self, timeout: float | None = None) -> list[Any]:
        if not self.done.wait(timeout):
            raise TimeoutError("the decode workers did not answer in time")
        if self.error is not None:
            raise self.error
        out, self.results = self.results, []
        return out

    def cancel(self) -> bool:
        """Give up on the units: those not yet sent are never decoded, and no result is kept (their
        blocks are freed when the workers are done with them)."""
        self.dropped = True
        return True

    def cancelled(self) -> bool:
        return self.dropped


@dataclass
class _Task:
    id: int
    request: Request
    slot: int
    unit: DecodeUnit
    path: str
    spec: tuple
    block: tuple[int, int, int]  # segment, offset, bytes
    shape: tuple[int, int, int, int]
    attempts: int = 0


@dataclass
class _Worker:
    proc: subprocess.Popen
    conn: Connection
    pid: int
    tasks: deque = field(default_factory=deque)


class _State:
    """Everything the dispatcher thread and the finalizer need, without the reader itself (so an
    unreferenced reader is collected, and its finalizer stops the workers)."""

    def __init__(self, workers: int, arena: Arena):
        self.nworkers = workers
        self.arena = arena
        self.workers: list[_Worker] = []
        self.pending: deque[_Task] = deque()
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.stats = ReaderStats()
        self.failure: BaseException | None = None

    def wake(self) -> None:
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass


def _package_root() -> str:
    """The folder that holds the ``bsp_dali`` package (this file is bsp_dali/decode/procreader.py)."""
    return str(Path(__file__).resolve().parents[2])


def _spawn_worker() -> tuple[subprocess.Popen, Connection]:
    parent_end, child_end = socket.socketpair()
    code = (f"import sys; sys.path.insert(0, {_package_root()!r}); "
            f"from bsp_dali.decode.procreader import _worker_main; _worker_main({child_end.fileno()})")
    try:
        proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(child_end.fileno(),),
                                stdin=subprocess.DEVNULL, close_fds=True)
    except BaseException:
        parent_end.close()
        raise
    finally:
        child_end.close()
    return proc, Connection(parent_end.detach())


def _await_worker(proc: subprocess.Popen, conn: Connection) -> _Worker:
    try:
        if not conn.poll(WORKER_START_S):
            raise RuntimeError(f"a decode worker process did not start within {WORKER_START_S:.0f} s")
        try:
            _, pid = conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"a decode worker process exited with code {proc.wait()} before starting; run "
                               f"`{sys.executable} -c 'import bsp_dali.decode.procreader'` to see why") from None
    except BaseException:
        proc.kill()
        proc.wait()
        conn.close()
        raise
    return _Worker(proc, conn, pid)


def _start_workers(n: int) -> list[_Worker]:
    """Start ``n`` workers at once and wait until each is ready."""
    spawned = []
    try:
        for _ in range(n):
            spawned.append(_spawn_worker())
    except BaseException:
        for proc, conn in spawned:
            proc.kill()
            proc.wait()
            conn.close()
        raise
    workers: list[_Worker] = []
    error: BaseException | None = None
    for proc, conn in spawned:
        if error is not None:
            proc.kill()
            proc.wait()
            conn.close()
            continue
        try:
            workers.append(_await_worker(proc, conn))
        except BaseException as e:  # noqa: BLE001 - stop the others, then raise
            error = e
    if error is not None:
        for w in workers:
            w.proc.kill()
            w.proc.wait()
            w.conn.close()
        raise error
    return workers


def _finish(state: _State, task: _Task, error: str | None, stats: tuple | None) -> None:
    """A worker answered for ``task`` (or died: ``error`` says so). Called with the lock held."""
    req = task.request
    s, off, nbytes = task.block
    if stats is not None:
        st = state.stats
        st.units += 1
        st.frames += task.unit.length
        st.decoded += stats[0]
        st.fallbacks += stats[1]
        st.decode_s += stats[2]
        st.transform_s += stats[3]
    if req.dropped or error is not None:
        state.arena.free(s, off, nbytes)
        result: Any = None if req.dropped else BadVideo(task.path, error or "")
    else:
        result = state.arena.view(s, off, task.shape)
    if not req.dropped:
        req.results[task.slot] = result
    req.remaining -= 1
    if req.remaining == 0:
        req.done.set()


def _fail_all(state: _State, err: BaseException) -> None:
    """The dispatcher cannot go on: every waiting request gets the error."""
    with state.lock:
        state.failure = err
        tasks = list(state.pending) + [t for w in state.workers for t in w.tasks]
        state.pending.clear()
        for w in state.workers:
            w.tasks.clear()
        for t in tasks:
            if t.request.error is None:
                t.request.error = err
            t.request.done.set()


def _dispatch(state: _State) -> None:
    """The dispatcher thread: starts the workers, keeps each fed with up to IN_FLIGHT_PER_WORKER
    units, collects their answers, replaces a worker that dies."""
    try:
        workers = _start_workers(state.nworkers)
        with state.lock:
            state.workers.extend(workers)
            if state.stopping:
                return
        while True:
            with state.lock:
                if state.stopping:
                    return
                for w in state.workers:
                    while len(w.tasks) < IN_FLIGHT_PER_WORKER and state.pending:
                        task = state.pending.popleft()
                        if task.request.dropped:  # never sent: its block was never written
                            _finish(state, task, "cancelled", None)
                            continue
                        try:
                            w.conn.send(("task", task.id, task.spec))
                        except OSError:
                            state.pending.appendleft(task)  # the worker is gone: found below
                            break
                        w.tasks.append(task)
                conns = {w.conn: w for w in state.workers}
            ready = wait(list(conns) + [state.wake_r], timeout=PARENT_POLL_S)
            for r in ready:
                if r is state.wake_r:
                    try:
                        while state.wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                    continue
                w = conns[r]
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    _replace(state, w)
                    continue
                with state.lock:
                    task = w.tasks.popleft()
                    assert msg[1] == task.id, (msg, task.id)
                    _finish(state, task, msg[2], msg[3])
    except BaseException as e:  # noqa: BLE001 - handed to every waiting request
        log.error("the decode dispatcher stopped: %s", e)
        _fail_all(state, e if isinstance(e, Exception) else RuntimeError(str(e)))


def _replace(state: _State, w: _Worker) -> None:
    """A worker died: fail what it held (the unit it was decoding killed it, or the OOM killer did),
    start another."""
    code = w.proc.wait()
    w.conn.close()
    how = f"signal {-code}" if code < 0 else f"exit code {code}"
    with state.lock:
        state.workers.remove(w)
        tasks = list(w.tasks)
        w.tasks.clear()
        for t in reversed(tasks[1:]):  # never started: decode them elsewhere
            state.pending.appendleft(t)
        if tasks:
            first = tasks[0]
            if first.attempts == 0:  # once more on a fresh worker: the OOM killer may have been the cause
                first.attempts += 1
                state.pending.appendleft(first)
            else:
                _finish(state, first, f"the decode worker process died ({how}) while decoding this file, twice",
                        None)
        if state.stopping:
            return
        state.stats.restarts += 1
    log.warning("a decode worker process died (%s); starting another", how)
    nw = _start_workers(1)
    with state.lock:
        state.workers.extend(nw)


def _shutdown(state: _State) -> None:
    """Stop the dispatcher and the workers, unlink the arena. Idempotent; runs from close(), from the
    reader's finalizer and at interpreter exit."""
    with state.lock:
        if state.stopping and state.thread is None:
            return
        state.stopping = True
        thread, state.thread = state.thread, None
    state.wake()
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout=WORKER_START_S + STOP_GRACE_S)
    with state.lock:
        workers, state.workers = list(state.workers), []
        tasks = list(state.pending) + [t for w in workers for t in w.tasks]
        state.pending.clear()
    for w in workers:
        try:
            w.conn.send(("stop",))
        except OSError:
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()
        w.conn.close()
    for t in tasks:  # nothing writes to their blocks any more
        if t.request.error is None:
            t.request.error = RuntimeError("the window reader was closed")
        t.request.done.set()
    state.arena.close()
    for s in (state.wake_r, state.wake_w):
        s.close()


class ProcessWindowReader:
    """A :class:`~bsp_dali.decode.readers.WindowReader` over ``workers`` decode processes (PyAV, one FFmpeg
    thread each, Pillow for crop/resize/flip: the same pixels as ``CPUWindowReader`` over
    ``PyAVReader``) writing into shared memory; see the module docstring. ``skip_nonref``: skip
    unreferenced frames before each window (``bsp_dali.decode.pyav.decode_window``). Workers start on
    the first request."""

    def __init__(self, index: DatasetIndex, size: tuple[int, int], workers: int | None = None,
                 skip_nonref: bool = True, segment_bytes: int = SEGMENT_BYTES):
        workers = default_workers() if workers is None else int(workers)
        if workers < 1:
            raise ValueError(f"workers ({workers}) must be >= 1")
        self.index, self.size = index, (int(size[0]), int(size[1]))
        self.workers = workers
        self.skip_nonref = bool(skip_nonref)
        self.description = f"PyAV (CPU) in {workers} worker process{'es' if workers > 1 else ''}, shared memory"
        self._segment_bytes = int(segment_bytes)
        self._state: _State | None = None
        self._finalizer: weakref.finalize | None = None
        self._ids = itertools.count()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ set-up
    def _started(self) -> _State:
        with self._lock:
            if self._state is None:
                sweep_stale_segments()
                state = _State(self.workers, Arena(self._segment_bytes))
                state.thread = threading.Thread(target=_dispatch, args=(state,), daemon=True,
                                                name="bsp-decode-dispatch")
                self._finalizer = weakref.finalize(self, _shutdown, state)  # also runs at exit
                state.thread.start()
                self._state = state
            return self._state

    @property
    def stats(self) -> ReaderStats:
        return self._state.stats if self._state is not None else ReaderStats()

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (tests check that none outlives the reader)."""
        state = self._state
        if state is None:
            return []
        with state.lock:
            return [w.pid for w in state.workers]

    @property
    def arena(self) -> Arena | None:
        return self._state.arena if self._state is not None else None

    # ------------------------------------------------------------------ work
    def submit(self, units: Sequence[DecodeUnit]) -> Request:
        """Hand units to the workers now; the answer comes through the returned request."""
        state = self._started()
        req = Request(len(units))
        if not units:
            return req
        H, W = self.size
        tasks = []
        for k, u in enumerate(units):
            video = self.index.videos[u.video]
            path = self.index.resolve(video.path)
            shape = (u.length, H, W, 3)
            nbytes = u.length * H * W * 3
            s, off = state.arena.alloc(nbytes)
            spec = (path, video, u.start, u.stop - 1, u.crop, u.flip, self.size, state.arena.path(s), off,
                    self.skip_nonref)
            cost = video.frames_to_decode(u.start, u.stop - 1) if u.stop <= video.num_frames else u.length
            tasks.append((cost, _Task(next(self._ids), req, k, u, path, spec, (s, off, nbytes), shape)))
        tasks.sort(key=lambda ct: -ct[0])  # longest first: the batch ends evenly across workers
        with state.lock:
            if state.failure is not None:
                for _, t in tasks:
                    state.arena.free(*t.block)
                raise state.failure
            state.pending.extend(t for _, t in tasks)
        state.wake()
        return req

    def read_windows(self, units: Sequence[DecodeUnit]) -> list[Any]:
        return self.submit(units).result()

    def close(self) -> None:
        """Stop the workers and unlink the shared memory (views already handed out stay readable). A
        later request starts new workers."""
        with self._lock:
            fin, self._finalizer, self._state = self._finalizer, None, None
        if fin is not None:
            fin()


__all__ = ["Arena", "ProcessWindowReader", "ReaderStats", "Request", "SHM_PREFIX", "default_workers",
           "shm_dir", "sweep_stale_segments"]
