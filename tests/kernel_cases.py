"""Kernel test cases shared by the host-build, mutation and GPU tests.

Each case is a batch (sources, tables) plus launch settings. ``compare(run)`` renders every case in
every dtype and layout with ``run`` and with the NumPy reference and returns the mismatches, so
the same harness proves the kernel right (no mismatch) and proves itself sensitive (a mutated
kernel has mismatches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from bsp_dali import DatasetIndex, Planner, SynthesisConfig
from bsp_dali.plan.config import BoundaryType
from bsp_dali.synth.synthesis import synthesize_reference
from bsp_dali.synth.tables import Layout, OutDType, RecipeTables


@dataclass
class Case:
    name: str
    sources: list[np.ndarray]
    tables: RecipeTables
    mean: Any = None
    std: Any = None
    launch: dict = field(default_factory=dict)
    dtypes: tuple[OutDType, ...] = tuple(OutDType)


def _index(num_classes: int = 3, per_class: int = 3, frames: int = 40) -> DatasetIndex:
    paths = [f"c{c}/v{v}.mp4" for c in range(num_classes) for v in range(per_class)]
    names = [f"class{c}" for c in range(num_classes) for _ in range(per_class)]
    lengths = [frames + 3 * i for i in range(len(paths))]
    return DatasetIndex.from_lists(paths, names, lengths)


def plan_batch(cfg: SynthesisConfig, n: int, seed: int, H: int, W: int, C: int = 3,
               index: DatasetIndex | None = None) -> tuple[list[np.ndarray], RecipeTables, list]:
    """Plans from the real planner, with random uint8 frames for every decoded frame."""
    planner = Planner(index or _index(), cfg, seed=seed)
    plans = planner.plan_many(range(n))
    rng = np.random.default_rng(seed)
    sources = [rng.integers(0, 256, size=(len(frames), H, W, C), dtype=np.uint8)
               for p in plans for frames in p.frames]
    return sources, RecipeTables.from_plans(plans), plans


def hand_tables(entries: list[list[list[tuple[int, int, float]]]], frames_per_source: list[int]) -> RecipeTables:
    """Tables written by hand: entries[n][t] = [(source, position, weight), ...]."""
    N, T = len(entries), len(entries[0])
    K = max(len(terms) for row in entries for terms in row)
    src = np.full((N, T, K), -1, np.int32)
    frame = np.zeros((N, T, K), np.int32)
    weight = np.zeros((N, T, K), np.float32)
    for n, row in enumerate(entries):
        for t, terms in enumerate(row):
            for k, (s, f, w) in enumerate(terms):
                src[n, t, k], frame[n, t, k], weight[n, t, k] = s, f, w
    return RecipeTables(src, frame, weight, tuple(frames_per_source))


def all_cases() -> list[Case]:
    cases: list[Case] = []
    all4 = SynthesisConfig()
    cases.append(Case("default-4way", *plan_batch(all4, 8, seed=1, H=9, W=11)[:2]))
    # eps = tau: the whole clip is a transition
    cfg = SynthesisConfig(tau=3, eps_range=(3, 3), types=(BoundaryType.DIFF_CLASS,))
    cases.append(Case("eps-equals-tau", *plan_batch(cfg, 3, seed=2, H=5, W=7)[:2]))
    # gamma < 1 repeats frames; gamma > 1 skips them; stride 2
    cfg = SynthesisConfig(tau=4, gammas=(0.3, 0.5, 0.75, 2.5), stride=2, types=(BoundaryType.DIFF_SPEED,))
    cases.append(Case("speed-repeats-and-skips", *plan_batch(cfg, 4, seed=3, H=6, W=5)[:2]))
    # T = 2, odd sizes
    cfg = SynthesisConfig(tau=1, eps_range=(1, 1), t_range=(1, 1))
    cases.append(Case("T2-odd", *plan_batch(cfg, 6, seed=4, H=3, W=13)[:2]))
    # grid-stride loop (1 block of 32 threads per frame) and the z dimension (2 frames per grid row)
    cases.append(Case("grid-stride-and-z", *plan_batch(all4, 3, seed=5, H=10, W=9)[:2],
                      launch={"max_blocks_x": 1, "block": 32, "max_blocks_y": 2}))
    # 1, 2 and 4 channels, custom statistics
    for C in (1, 2, 4):
        src, tab, _ = plan_batch(all4, 2, seed=10 + C, H=4, W=6, C=C)
        cases.append(Case(f"channels-{C}", src, tab, mean=[10.0 * (c + 1) for c in range(C)],
                          std=[3.0 + c for c in range(C)]))
    # every uint8 value, blended half and half: exact .5 ties for the uint8 rounding
    vals = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    rev = vals[:, ::-1, ::-1, :].copy()
    half = hand_tables([[[(0, 0, 0.5), (1, 0, 0.5)], [(0, 0, 1.0)], [(1, 0, 0.25), (0, 0, 0.75)]]], [1, 1])
    cases.append(Case("u8-ties", [vals, rev], half, mean=[0.0], std=[1.0], dtypes=(OutDType.UINT8,)))
    # float16: odd integers above 2048 are exact ties (RNE), tiny values are half subnormals,
    # huge values overflow to inf, negative values keep their sign
    one = hand_tables([[[(0, 0, 1.0)], [(0, 0, 0.5), (1, 0, 0.5)]]], [1, 1])
    for name, mean, std in (("f16-ties", -2048.0, 1.0), ("f16-subnormal", 3.0, 1e7),
                            ("f16-underflow", 3.0, 1e8), ("f16-overflow", 0.0, 1e-3),
                            ("f16-negative", 200.0, 0.37)):
        cases.append(Case(name, [vals, rev], one, mean=[mean], std=[std], dtypes=(OutDType.FLOAT16,)))
    # bfloat16: values 512..767 have a spacing of 4, so acc = 2 mod 4 are ties
    cases.append(Case("bf16-ties", [vals, rev], one, mean=[-512.0], std=[1.0], dtypes=(OutDType.BFLOAT16,)))
    return cases


Runner = Callable[..., Any]


def compare(run: Runner, cases: list[Case] | None = None, to_numpy: Callable[[Any], np.ndarray] = np.asarray,
            use_launch: bool = True) -> list[str]:
    """Mismatches between ``run`` and the reference over all cases, dtypes and layouts."""
    problems: list[str] = []
    for case in cases if cases is not None else all_cases():
        for dtype in case.dtypes:
            for layout in Layout:
                kwargs = dict(mean=case.mean, std=case.std, dtype=dtype, layout=layout)
                want = synthesize_reference(case.sources, case.tables, **kwargs)
                extra = case.launch if use_launch else {}
                got = to_numpy(run(case.sources, case.tables, **kwargs, **extra))
                if got.shape != want.shape:
                    problems.append(f"{case.name}/{dtype.value}/{layout.value}: shape {got.shape} != {want.shape}")
                    continue
                a = got.view(np.uint8).reshape(-1)
                b = np.ascontiguousarray(want).view(np.uint8).reshape(-1)
                if got.dtype != want.dtype or not np.array_equal(a, b):
                    bad = int(np.count_nonzero(got.reshape(-1) != want.reshape(-1))) if got.dtype == want.dtype else -1
                    problems.append(f"{case.name}/{dtype.value}/{layout.value}: {bad} elements differ")
    return problems
