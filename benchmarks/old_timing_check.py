"""Show that the timing tests catch the timing they replaced.

``tests/test_measure.py`` checks the bench's steady-state timing and the training loop's data-wait
against loaders whose true rate is known. This script runs the same tests twice more, in a
temporary folder, with the old method put back:

1. the bench's old timing (3 warm-up batches, then 10 timed batches) in place of the warm-up rules
   and the 30-batch / 10 s window;
2. the training loop's old timing (``bsp-dali train`` before the fix: CUDA synchronized after every
   step, data-wait = time blocked in ``next()`` over the interval) in place of ``LoopTimer``.

It passes (exit 0) when the current tests pass and each old method fails at least one of them,
and prints what the old methods measured against the truth. Run from the repository root::

    .venv/bin/python benchmarks/old_timing_check.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests" / "test_measure.py"

OLD_LOOP = '''
import time
from bsp_dali.measure import LoopReport


class OldLoopTimer:
    """bsp-dali train's loop timing at commit 39fcd37, shaped like LoopTimer."""

    def __init__(self, sync=None, event=None):
        self.sync = sync
        self.wait = self.busy = 0.0
        self.steps = self.clips = 0

    def next_batch(self, it):
        self.t0 = time.perf_counter()
        batch = next(it)
        self.t1 = time.perf_counter()
        return batch

    def step_done(self, clips):
        if self.sync:
            self.sync()  # after every step
        t2 = time.perf_counter()
        self.wait += self.t1 - self.t0
        self.busy += t2 - self.t0
        self.steps += 1
        self.clips += clips

    def report(self):
        frac = self.wait / max(self.busy, 1e-9)
        return LoopReport(steps=self.steps, clips=self.clips, seconds=self.busy, data_wait=frac, host_wait=frac,
                          step_s=(self.busy - self.wait) / self.steps, wait_s=self.wait / self.steps,
                          clips_per_s=self.clips / self.busy)
'''


def substitute(text: str, pattern: str, new: str) -> str:
    out, n = re.subn(pattern, new, text, flags=re.M)
    if n == 0:
        sys.exit(f"old_timing_check: {TESTS.name} no longer contains {pattern!r}; update this script")
    return out


def old_bench_timing(text: str) -> str:
    text = substitute(text, r"^WINDOW = Window\(.*$", "WINDOW = Window(min_batches=10, min_seconds=0, quick=True)")
    text = substitute(text, r"warmup=dataloader_warmup\(workers, prefetch\)", "warmup=3")
    return substitute(text, r"warmup=prefetch_warmup\(depth\)", "warmup=3")


def old_loop_timing(text: str) -> str:
    return substitute(text, r"^from bsp_dali\.measure import \(LoopTimer, ",
                      "from old_loop import OldLoopTimer as LoopTimer\nfrom bsp_dali.measure import (")


def run(folder: Path, name: str, text: str, select: str) -> tuple[int, str]:
    path = folder / name
    path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", select, str(path)],
                          cwd=folder, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def main() -> int:
    source = TESTS.read_text()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "old_loop.py").write_text(OLD_LOOP)
        cases = [
            ("current method", "test_measure_now.py", source, "within_15 or data_wait or asynchronous", 0),
            ("old bench timing", "test_measure_old_bench.py", old_bench_timing(source), "within_15", 1),
            ("old loop timing", "test_measure_old_loop.py", old_loop_timing(source), "data_wait or asynchronous", 1),
        ]
        for what, name, text, select, want in cases:
            rc, out = run(folder, name, text, select)
            summary = out.strip().splitlines()[-1] if out.strip() else "(no output)"
            failed = rc == 1
            good = (not failed and rc == 0) if want == 0 else failed
            ok &= good
            print(f"{what:18s} {summary}  -> {'as expected' if good else 'NOT AS EXPECTED'}")
            for line in out.splitlines():
                if not line.startswith("E       AssertionError"):
                    continue
                if "LoopReport(" in line:
                    got = dict(re.findall(r"(clips_per_s|data_wait|host_wait)=([0-9.e-]+)", line))
                    line = "old loop reported " + ", ".join(f"{k} {float(v):.3g}" for k, v in got.items())
                print("    " + line.replace("E       AssertionError: ", "")[:160])
    print("old_timing_check:", "the tests catch both old methods" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
