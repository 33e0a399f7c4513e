"""The planner: every random choice of a synthesized sample, drawn apart from its rendering.

``Planner.plan(sample_index, epoch)`` returns a :class:`SamplePlan` that says, exactly, which
frames of which videos to decode and how to combine them (the recipe of ``BSP-METHOD.md``).
A plan depends on ``(seed, epoch, sample_index)`` alone: not on the batch size, worker count,
shard or resume point, so any process can recompute any sample.

Equations (0-based, ``d`` = stride, ``T = 2*tau``):

* diff_class (Eq. 1): ``FA[k] = a0+k*d``, ``FB[k] = b0+k*d``; for ``tau-eps <= i < tau+eps`` the
  output is ``wA*A[FA[i]] + wB*B[FB[i-tau+eps]]`` with ``wB = (i+1-tau+eps)/(2*eps)``.
* same_class (Eq. 2): ``A[a0+i*d]`` for ``i < tau``, ``B[b0+(i-tau)*d]`` after.
* diff_speed (Eq. 3): ``V[s0+i*d]`` for ``i < t``, then the frame nearest (half up) to
  ``s0 + d*(t-1 + gamma*(i-t+1))``.
* same_speed: ``V[s0+i*d]``.

Terms of weight 0 (the last transition frame of diff_class is pure B) are left out of the recipe,
so only frames that contribute are decoded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable, Sequence

import numpy as np

from ..data.index import DatasetIndex
from .augment import FULL_BOX, Box, SpatialConfig, SpatialMode
from .augment import draw as draw_spatial
from .config import BoundaryType, NamedChoice, SynthesisConfig, exact, round_half_up

# Rejection-sampling budget before falling back to enumerating the valid candidates. Both give
# the same (uniform) distribution; the budget only bounds the cost of the common case.
MAX_REJECTION_TRIES = 32
REPLACEMENT_TAG = 0x5E9A  # entropy word of replacement draws (after a decode failure)
ACTION_TAG = 0xAC71  # entropy word of the action stream's per-epoch permutation
GROUP_TAG = 0x6A0B  # entropy word of the group streams of ``share > 1``
SPATIAL_KEY = 1000  # spawn key of a group's spatial stream (slots use keys 0, 1)

Term = tuple[int, int, float]  # (source slot, source frame index, weight)


class PlanningError(ValueError):
    """The data set cannot supply a sample type under the given settings (raised at set-up)."""


class ClipMode(NamedChoice):
    """Which clips a stream of samples holds (the iterator's and the decode stage's ``mode``, a
    task's ``streams``): ``bsp``, clips with synthesized boundaries (:meth:`Planner.plan`), or
    ``action``, plain clips labelled with their action class (:meth:`Planner.plan_action`)."""

    BSP = "bsp"
    ACTION = "action"

    @classmethod
    def what(cls) -> str:
        return "mode"


@dataclass(frozen=True)
class SourceRef:
    """A source video of a sample: its position in the index, path and class."""

    video: int
    path: str
    label: int
    class_name: str


@dataclass(frozen=True)
class SamplePlan:
    """Everything needed to render one synthesized clip, and its targets.

    ``frames[s]`` are the source-frame indices to decode from ``sources[s]`` (ascending, unique);
    ``recipe[i]`` lists the terms ``(slot, source frame index, weight)`` of output frame ``i``.
    """

    index: int
    epoch: int
    type: BoundaryType
    label: int
    tau: int
    eps: int | None
    gamma: float | None
    t: int | None
    mu: int | None
    stride: int
    sources: tuple[SourceRef, ...]
    frames: tuple[tuple[int, ...], ...]
    recipe: tuple[tuple[Term, ...], ...]
    crop: Box = FULL_BOX  # relative (y0, x0, y1, x1), shared by all sources of the sample
    flip: bool = False

    @property
    def T(self) -> int:  # noqa: N802
        return 2 * self.tau

    @property
    def action(self) -> int:
        """Action label: the class of the first source."""
        return self.sources[0].label

    @property
    def heatmap(self) -> np.ndarray:
        """Regression target ``y[k] = exp(-(k-mu)^2 / (2*tau))``, float32 [T]; all zeros when
        the clip has no boundary (same_speed)."""
        return boundary_heatmap(self.mu, self.tau)

    def to_json(self) -> dict[str, Any]:
        """The recipe object of BSP-METHOD.md."""
        return {
            "index": self.index,
            "type": self.type.key,
            "label": self.label,
            "tau": self.tau,
            "eps": self.eps,
            "gamma": self.gamma,
            "t": self.t,
            "mu": self.mu,
            "sources": [{"path": s.path, "class": s.class_name} for s in self.sources],
            "recipe": [[[s, f, w] for (s, f, w) in terms] for terms in self.recipe],
        }


def boundary_heatmap(mu: int | None, tau: int) -> np.ndarray:
    T = 2 * tau
    if mu is None:
        return np.zeros(T, dtype=np.float32)
    k = np.arange(T, dtype=np.float64)
    return np.exp(-((k - mu) ** 2) / (2.0 * tau)).astype(np.float32)


# ---------------------------------------------------------------------- recipes (pure functions)
def recipe_diff_class(tau: int, eps: int, a0: int, b0: int, d: int) -> list[list[Term]]:
    out: list[list[Term]] = []
    for i in range(2 * tau):
        if i < tau - eps:
            out.append([(0, a0 + i * d, 1.0)])
        elif i < tau + eps:
            w_b = Fraction(i + 1 - tau + eps, 2 * eps)
            w_a = 1 - w_b
            terms: list[Term] = []
            if w_a > 0:
                terms.append((0, a0 + i * d, float(w_a)))
            terms.append((1, b0 + (i - tau + eps) * d, float(w_b)))
            out.append(terms)
        else:
            out.append([(1, b0 + (i - tau + eps) * d, 1.0)])
    return out


def recipe_same_class(tau: int, a0: int, b0: int, d: int) -> list[list[Term]]:
    return [[(0, a0 + i * d, 1.0)] if i < tau else [(1, b0 + (i - tau) * d, 1.0)] for i in range(2 * tau)]


def speed_offset(i: int, t: int, gamma: float, d: int) -> int:
    """Offset from ``s0`` of output frame ``i`` of a diff_speed clip (Eq. 3, nearest, half up)."""
    if i < t:
        return i * d
    return round_half_up(d * (t - 1 + exact(gamma) * (i - t + 1)))


def recipe_diff_speed(tau: int, t: int, gamma: float, s0: int, d: int) -> list[list[Term]]:
    return [[(0, s0 + speed_offset(i, t, gamma, d), 1.0)] for i in range(2 * tau)]


def recipe_same_speed(tau: int, s0: int, d: int) -> list[list[Term]]:
    return [[(0, s0 + i * d, 1.0)] for i in range(2 * tau)]


# ---------------------------------------------------------------------- frame requirements
def frames_needed_diff_class(tau: int, eps: int, d: int) -> tuple[int, int]:
    """Frames (A, B) a diff_class clip spans from its start frames (weight-0 terms excluded)."""
    return (tau + eps - 2) * d + 1, (tau + eps - 1) * d + 1


def frames_needed_plain(tau: int, d: int) -> int:
    return (2 * tau - 1) * d + 1


def frames_needed_same_class(tau: int, d: int) -> int:
    return (tau - 1) * d + 1


def frames_needed_diff_speed(tau: int, t: int, gamma: float, d: int) -> int:
    return speed_offset(2 * tau - 1, t, gamma, d) + 1


def min_frames_needed(config: SynthesisConfig) -> int:
    """The length below which ``bsp-dali index`` excludes a video: one plain clip of ``T`` frames at
    the stride (what same_speed and the action stream need; shorter videos could only ever serve as
    one half of a two-source clip)."""
    return frames_needed_plain(config.tau, config.stride)


class _Pool:
    """Videos sorted by length, so 'every video with at least L frames' is a contiguous slice."""

    def __init__(self, members: np.ndarray, num_frames: np.ndarray):
        order = np.argsort(num_frames[members], kind="stable")
        self.members = members[order]
        self.lengths = num_frames[self.members]

    def start(self, min_frames: int) -> int:
        return int(np.searchsorted(self.lengths, min_frames, side="left"))

    def count(self, min_frames: int) -> int:
        return len(self.members) - self.start(min_frames)

    def eligible(self, min_frames: int) -> np.ndarray:
        return self.members[self.start(min_frames):]


class _Draws:
    """64-bit uniforms of one group stream: ``start`` (drawn first, for the start frame) and then
    ``next()`` for video candidates, so the start is the same whatever the candidates consumed."""

    def __init__(self, rng: np.random.Generator):
        self._rng = rng
        self.start = self._one()

    def _one(self) -> int:
        return int(self._rng.integers(0, 2**64, dtype=np.uint64))

    def next(self) -> int:
        return self._one()


class Planner:
    """Draws sample plans from a :class:`DatasetIndex` under a :class:`SynthesisConfig`.

    Raises :class:`PlanningError` at construction when an enabled type cannot be sampled (one
    class only, no class with two videos, videos too short for the clip settings...).
    """

    def __init__(self, index: DatasetIndex, config: SynthesisConfig | None = None, seed: int = 0,
                 spatial: SpatialConfig | None = None, share: int = 1):
        self.index = index
        if not isinstance(share, (int, np.integer)) or isinstance(share, bool) or share < 1:
            raise ValueError(f"share ({share!r}) must be an integer >= 1")
        # Groups of `share` consecutive samples draw their videos, start frames and crops from
        # common random numbers (docs/method.md, "Decode once, use more than once").
        self.share = int(share)
        self.config = config or SynthesisConfig()
        # No spatial config: whole frames at their own size (the box is the full frame).
        self.spatial = spatial
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed ({seed!r}) must be a non-negative integer")
        self.seed = int(seed)
        if len(index) == 0:
            raise PlanningError("the data set has no videos")
        nf = index.num_frames
        self._all = _Pool(np.arange(len(index), dtype=np.int64), nf)
        self._order_cache: tuple[int, np.ndarray] | None = None
        self._class = [_Pool(index.videos_of_class(c), nf) for c in range(index.num_classes)]
        self._check_feasible()

    # ------------------------------------------------------------------ set-up checks
    def _param_grid(self, kind: BoundaryType) -> list[dict[str, Any]]:
        cfg = self.config
        if kind == BoundaryType.DIFF_CLASS:
            lo, hi = cfg.eps_range
            return [{"eps": e} for e in range(lo, hi + 1)]
        if kind == BoundaryType.DIFF_SPEED:
            tlo, thi = cfg.resolved_t_range
            return [{"gamma": g, "t": t} for g in cfg.gammas for t in range(tlo, thi + 1)]
        return [{}]

    def _needs(self, kind: BoundaryType, eps: int | None = None, gamma: float | None = None,
               t: int | None = None) -> tuple[int, ...]:
        tau, d = self.config.tau, self.config.stride
        if kind == BoundaryType.DIFF_CLASS:
            assert eps is not None
            return frames_needed_diff_class(tau, eps, d)
        if kind == BoundaryType.SAME_CLASS:
            n = frames_needed_same_class(tau, d)
            return (n, n)
        if kind == BoundaryType.DIFF_SPEED:
            assert gamma is not None and t is not None
            return (frames_needed_diff_speed(tau, t, gamma, d),)
        return (frames_needed_plain(tau, d),)

    def _check_feasible(self) -> None:
        cfg, idx = self.config, self.index
        longest = int(idx.num_frames.max())
        for kind, p in zip(cfg.types, cfg.type_probs):
            if p <= 0:
                continue
            need = max(max(self._needs(kind, **params)) for params in self._param_grid(kind))
            if kind == BoundaryType.DIFF_CLASS:
                ok = [c for c in range(idx.num_classes) if self._class[c].count(need) > 0]
                if len(ok) < 2:
                    raise PlanningError(
                        f"diff_class needs videos of at least 2 classes with >= {need} frames "
                        f"(tau={cfg.tau}, eps up to {cfg.eps_range[1]}, stride={cfg.stride}); "
                        f"found {len(ok)} such class(es) among {idx.num_classes}. "
                        "Add classes, lower eps/stride, or disable diff_class."
                    )
            elif kind == BoundaryType.SAME_CLASS:
                if not any(self._class[c].count(need) >= 2 for c in range(idx.num_classes)):
                    raise PlanningError(
                        f"same_class needs a class with at least 2 videos of >= {need} frames "
                        f"(tau={cfg.tau}, stride={cfg.stride}); no class has two. "
                        "Add videos or disable same_class."
                    )
            elif self._all.count(need) == 0:
                detail = (
                    f"gammas {list(cfg.gammas)}, t in {list(cfg.resolved_t_range)}"
                    if kind == BoundaryType.DIFF_SPEED else f"T={cfg.T}"
                )
                raise PlanningError(
                    f"{kind.key} needs a video with >= {need} frames ({detail}, stride={cfg.stride}); "
                    f"the longest has {longest}. Lower the settings or disable {kind.key}."
                )

    # ------------------------------------------------------------------ sampling helpers
    def rng(self, sample_index: int, epoch: int, stream: int = 0, replacement: bool = False) -> np.random.Generator:
        """A random stream of one sample: a function of (seed, epoch, index) only. Stream 0 draws the
        content, stream 1 the spatial transform (so augmentation settings never change which
        videos are picked); ``replacement`` gives the independent streams of a replacement draw."""
        entropy = [self.seed, epoch, sample_index] + ([REPLACEMENT_TAG] if replacement else [])
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=(stream,) if stream else ())))

    def group_rng(self, sample_index: int, epoch: int, key: int, replacement: bool = False) -> np.random.Generator:
        """The stream of key ``key`` (a source slot, or ``SPATIAL_KEY``) shared by the group
        ``sample_index // share``: a function of (seed, epoch, group, key) only."""
        entropy = [self.seed, epoch, sample_index // self.share, GROUP_TAG] + ([REPLACEMENT_TAG] if replacement else [])
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=(key,))))

    @staticmethod
    def _scaled(r: int, n: int) -> int:
        """``floor(u * n)`` for ``u = r / 2**64``: the same ``r`` lands in the same place of every
        list of the same length (uniform up to 2**-64 per value)."""
        return (int(r) * int(n)) >> 64

    def _coupled_pick(self, draw: "_Draws", pool: _Pool, min_frames: int, accept=None, exclude: int | None = None,
                      banned: frozenset[int] = frozenset()) -> int:
        """The coupled twin of :meth:`_uniform`: a uniformly drawn video with >= min_frames frames
        satisfying ``accept``, other than ``exclude`` and outside ``banned``, from the group's
        numbers. Candidates are drawn from the whole pool with the group's uniforms and the first
        acceptable one is taken (rejection: uniform over the accepted set, whatever that set is),
        so two samples of a group agree whenever the first candidate suits both."""
        nf = self.index.num_frames

        def ok(v: int) -> bool:
            return nf[v] >= min_frames and v != exclude and v not in banned and (accept is None or accept(v))

        n = len(pool.members)
        for _ in range(MAX_REJECTION_TRIES):
            v = int(pool.members[self._scaled(draw.next(), n)])
            if ok(v):
                return v
        valid = [int(v) for v in pool.eligible(min_frames) if ok(int(v))]
        if not valid:  # only reachable when videos were banned after failing to decode
            raise PlanningError(f"no usable video is left for this sample after excluding {len(banned)} "
                                "that failed to decode")
        return valid[self._scaled(draw.next(), len(valid))]

    @staticmethod
    def _uniform(rng: np.random.Generator, pool: _Pool, min_frames: int, accept=None,
                 exclude: int | None = None, banned: frozenset[int] = frozenset()) -> int:
        """A uniformly drawn video with >= min_frames frames satisfying ``accept``, other than
        ``exclude`` and outside ``banned``."""
        start = pool.start(min_frames)
        n = len(pool.members) - start
        if accept is None and exclude is None and not banned:
            assert n > 0
            return int(pool.members[start + rng.integers(n)])

        def ok(v: int) -> bool:
            return v != exclude and v not in banned and (accept is None or accept(v))

        for _ in range(MAX_REJECTION_TRIES):
            if n == 0:
                break
            v = int(pool.members[start + rng.integers(n)])
            if ok(v):
                return v
        valid = [int(v) for v in pool.members[start:] if ok(int(v))]
        if not valid:  # only reachable when videos were banned after failing to decode
            raise PlanningError(f"no usable video is left for this sample after excluding {len(banned)} "
                                "that failed to decode")
        return valid[int(rng.integers(len(valid)))]

    def _ref(self, v: int) -> SourceRef:
        info = self.index.videos[v]
        return SourceRef(v, info.path, info.label, self.index.classes[info.label])

    def _start(self, rng: np.random.Generator, v: int, span: int) -> int:
        n = int(self.index.num_frames[v])
        return int(rng.integers(n - span + 1))

    # ------------------------------------------------------------------ the plan
    def plan(self, sample_index: int, epoch: int = 0, banned: frozenset[int] = frozenset()) -> SamplePlan:
        """The plan of one sample. ``banned`` (video positions that failed to decode) switches to the
        sample's replacement streams and never picks those videos."""
        if sample_index < 0 or epoch < 0:
            raise ValueError(f"sample_index ({sample_index}) and epoch ({epoch}) must be >= 0")
        cfg, idx = self.config, self.index
        banned = frozenset(banned)
        rng = self.rng(sample_index, epoch, replacement=bool(banned))
        if self.share > 1:  # videos and starts from the group's numbers, one stream per slot
            draws = [_Draws(self.group_rng(sample_index, epoch, slot, bool(banned))) for slot in (0, 1)]

            def pick(slot: int, pool: _Pool, need: int, **kw: Any) -> int:
                return self._coupled_pick(draws[slot], pool, need, banned=banned, **kw)

            def start(slot: int, v: int, span: int) -> int:
                return self._scaled(draws[slot].start, int(idx.num_frames[v]) - span + 1)
        else:  # today's independent draws, in their order, from the sample's own stream

            def pick(slot: int, pool: _Pool, need: int, **kw: Any) -> int:
                return self._uniform(rng, pool, need, banned=banned, **kw)

            def start(slot: int, v: int, span: int) -> int:
                return self._start(rng, v, span)

        kind = cfg.types[int(rng.choice(len(cfg.types), p=cfg.type_probs))]
        tau, d = cfg.tau, cfg.stride
        eps = gamma = t = mu = None
        labels = idx.labels

        if kind == BoundaryType.DIFF_CLASS:
            lo, hi = cfg.eps_range
            eps = int(rng.integers(lo, hi + 1))
            need_a, need_b = frames_needed_diff_class(tau, eps, d)
            # A must have a partner: some other class with a video of >= need_b frames. The
            # feasibility check guarantees two such classes exist, so any A qualifies.
            a = pick(0, self._all, need_a)
            b = pick(1, self._all, need_b, accept=lambda v: labels[v] != labels[a])
            a0, b0 = start(0, a, need_a), start(1, b, need_b)
            recipe = recipe_diff_class(tau, eps, a0, b0, d)
            videos, mu = [a, b], tau
        elif kind == BoundaryType.SAME_CLASS:
            need = frames_needed_same_class(tau, d)
            # a needs a partner in its class that is long enough and not banned
            a = pick(0, self._all, need, accept=lambda v: self._has_partner(int(labels[v]), need, banned))
            b = pick(1, self._class[labels[a]], need, exclude=a)
            a0, b0 = start(0, a, need), start(1, b, need)
            recipe = recipe_same_class(tau, a0, b0, d)
            videos, mu = [a, b], tau
        elif kind == BoundaryType.DIFF_SPEED:
            gamma = float(cfg.gammas[int(rng.integers(len(cfg.gammas)))])
            tlo, thi = cfg.resolved_t_range
            t = int(rng.integers(tlo, thi + 1))
            need = frames_needed_diff_speed(tau, t, gamma, d)
            v = pick(0, self._all, need)
            s0 = start(0, v, need)
            recipe = recipe_diff_speed(tau, t, gamma, s0, d)
            videos, mu = [v], t
        else:
            need = frames_needed_plain(tau, d)
            v = pick(0, self._all, need)
            s0 = start(0, v, need)
            recipe = recipe_same_speed(tau, s0, d)
            videos = [v]

        frames = tuple(
            tuple(sorted({f for terms in recipe for (s, f, _) in terms if s == slot}))
            for slot in range(len(videos))
        )
        crop, flip = self._spatial(sample_index, epoch, videos[0], bool(banned), coupled=self.share > 1)
        return SamplePlan(
            index=int(sample_index), epoch=int(epoch), type=kind, label=cfg.label_of(kind),
            tau=tau, eps=eps, gamma=gamma, t=t, mu=mu, stride=d,
            sources=tuple(self._ref(v) for v in videos), frames=frames,
            recipe=tuple(tuple(terms) for terms in recipe), crop=crop, flip=flip,
        )

    def _has_partner(self, label: int, need: int, banned: frozenset[int]) -> bool:
        """Whether class ``label`` has two unbanned videos of >= ``need`` frames."""
        pool = self._class[label]
        if not banned:
            return pool.count(need) >= 2
        return sum(int(m) not in banned for m in pool.eligible(need)) >= 2

    def _spatial(self, sample_index: int, epoch: int, first_video: int, replacement: bool,
                 coupled: bool = False) -> tuple[Box, bool]:
        if self.spatial is None:
            return FULL_BOX, False
        info = self.index.videos[first_video]
        rng = (self.group_rng(sample_index, epoch, SPATIAL_KEY, replacement) if coupled
               else self.rng(sample_index, epoch, stream=1, replacement=replacement))
        return draw_spatial(rng, self.spatial, info.width, info.height)

    # ------------------------------------------------------------------ action mode
    def epoch_order(self, epoch: int) -> np.ndarray:
        """A permutation of all videos for ``epoch`` (the action stream visits each once)."""
        cached = self._order_cache
        if cached is None or cached[0] != epoch:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch, ACTION_TAG])))
            self._order_cache = (epoch, rng.permutation(len(self.index)))
        return self._order_cache[1]

    def plan_action(self, sample_index: int, epoch: int = 0, banned: frozenset[int] = frozenset()) -> SamplePlan:
        """A plain clip of ``T`` frames at the stride, no synthesis, labelled with its action class
        (the vanilla stream). Sample ``i`` of an epoch is the ``i``-th video of that epoch's
        permutation (modulo the data-set size). Videos shorter than the clip repeat their last
        frame; a banned video is replaced by a random usable one."""
        if sample_index < 0 or epoch < 0:
            raise ValueError(f"sample_index ({sample_index}) and epoch ({epoch}) must be >= 0")
        cfg = self.config
        T, d = cfg.T, cfg.stride
        v = int(self.epoch_order(epoch)[sample_index % len(self.index)])
        rng = self.rng(sample_index, epoch, stream=2, replacement=bool(banned))
        if v in banned:
            v = self._uniform(rng, self._all, 1, banned=frozenset(banned))
        n = int(self.index.num_frames[v])
        span = (T - 1) * d + 1
        s0 = int(rng.integers(n - span + 1)) if n >= span else 0
        recipe = [[(0, min(s0 + i * d, n - 1), 1.0)] for i in range(T)]
        frames = (tuple(sorted({terms[0][1] for terms in recipe})),)
        crop, flip = self._spatial(sample_index, epoch, v, bool(banned))
        info = self._ref(v)
        return SamplePlan(
            index=int(sample_index), epoch=int(epoch), type=BoundaryType.SAME_SPEED, label=info.label,
            tau=cfg.tau, eps=None, gamma=None, t=None, mu=None, stride=d, sources=(info,),
            frames=frames, recipe=tuple(tuple(t) for t in recipe), crop=crop, flip=flip,
        )

    def plan_many(self, indices: Iterable[int], epoch: int = 0) -> list[SamplePlan]:
        return [self.plan(i, epoch) for i in indices]


def plain_plan(index: DatasetIndex, video: int, frames: Sequence[int], sample_index: int = 0,
               crop: Box = FULL_BOX, flip: bool = False) -> SamplePlan:
    """A plan without synthesis: output frame ``i`` is ``frames[i]`` of one video (repeats allowed).
    ``extract`` cuts snippets with it; ``inspect`` pairs snippets with it."""
    T = len(frames)
    if T < 2 or T % 2:
        raise ValueError(f"a clip needs an even number of frames >= 2, got {T}")
    info = index.videos[video]
    if min(frames) < 0 or max(frames) >= info.num_frames:
        raise ValueError(f"{info.path}: frames {min(frames)}..{max(frames)} outside 0..{info.num_frames - 1}")
    ref = SourceRef(video, info.path, info.label, index.classes[info.label])
    return SamplePlan(index=sample_index, epoch=0, type=BoundaryType.SAME_SPEED, label=info.label, tau=T // 2,
                      eps=None, gamma=None, t=None, mu=None, stride=1, sources=(ref,),
                      frames=(tuple(sorted(set(int(f) for f in frames))),),
                      recipe=tuple(((0, int(f), 1.0),) for f in frames), crop=crop, flip=flip)


def plans_summary(plans: Sequence[SamplePlan]) -> dict[str, int]:
    """Count of plans per type key (for logs and previews)."""
    out: dict[str, int] = {}
    for p in plans:
        out[p.type.key] = out.get(p.type.key, 0) + 1
    return out


__all__ = [
    "ClipMode",
    "MAX_REJECTION_TRIES",
    "Planner",
    "PlanningError",
    "SamplePlan",
    "SourceRef",
    "boundary_heatmap",
    "min_frames_needed",
    "plain_plan",
    "plans_summary",
]
