"""What a synthesized clip may be made of: boundary types and the synthesis settings.

Every choice the BSP paper leaves open is a field of :class:`SynthesisConfig` with a default and the
reason for it (see ``docs/method.md``); each field also declares its help text and command-line
option (:func:`setting`), which ``bsp-dali preview``, ``plan`` and ``train`` share. The planner (``bsp_dali.plan.planner``) draws every random choice
inside these bounds; nothing downstream of the planner is random.
"""

from __future__ import annotations

import enum
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from fractions import Fraction
from typing import Any, Mapping, Sequence


class ChoiceEnum(enum.Enum):
    """An enum whose values are the names users type. ``parse`` takes a member or its value (any
    case) and fails loudly, naming the choices (STYLE.md, 4)."""

    @classmethod
    def what(cls) -> str:
        return cls.__name__

    @classmethod
    def choices(cls) -> list[Any]:
        """The members a caller may ask for: all of them, unless a subclass keeps some for itself."""
        return list(cls)

    @classmethod
    def parse(cls, value: Any) -> Any:
        if isinstance(value, cls):
            return value
        for m in cls.choices():
            if str(m.value).lower() == str(value).lower():
                return m
        raise ValueError(f"unknown {cls.what()} {value!r}; expected one of {[m.value for m in cls.choices()]}")


class NamedChoice(str, ChoiceEnum):
    """A :class:`ChoiceEnum` whose members are also their names as strings: equal to them, printed,
    formatted and written to JSON as them. For modes that are keys of dicts keyed by name, records
    in reports and parts of messages (``ClipMode``, ``Decoder``); state saved with ``torch.save``
    stores ``.value``, a plain string."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class BoundaryType(enum.IntEnum):
    """The four synthetic boundary types, in the paper's (and the 4-way label's) order."""

    DIFF_CLASS = 0
    SAME_CLASS = 1
    DIFF_SPEED = 2
    SAME_SPEED = 3

    @property
    def key(self) -> str:
        """The name used in recipes, config files and the CLI (``diff_class``...)."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: "BoundaryType | str | int") -> "BoundaryType":
        """Accept an enum member, its key (``"diff_class"``) or its label; fail loudly otherwise."""
        if isinstance(value, BoundaryType):
            return value
        if isinstance(value, str):
            key = value.strip().lower().replace("-", "_")
            for member in cls:
                if member.key == key:
                    return member
            raise ValueError(
                f"unknown boundary type {value!r}; expected one of {[m.key for m in cls]}"
            )
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(cls):
            return cls(value)
        raise ValueError(f"unknown boundary type {value!r}; expected one of {[m.key for m in cls]}")

    @property
    def num_sources(self) -> int:
        """How many source videos a clip of this type reads."""
        return 2 if self in (BoundaryType.DIFF_CLASS, BoundaryType.SAME_CLASS) else 1


ALL_TYPES: tuple[BoundaryType, ...] = tuple(BoundaryType)


def setting(default: Any = MISSING, *, help: str, flag: str | None = None, default_factory: Any = MISSING,
            metavar: str | None = None) -> Any:
    """A config dataclass field with its help text and, when ``flag`` is given, the command-line
    option that sets it (``"--tau"``; ``"--resume/--no-resume"`` for a switch). ``bsp_dali/cli.py``
    builds every such option from these fields, so a new setting is one line here."""
    return field(default=default, default_factory=default_factory,
                 metadata={"help": help, "flag": flag, "metavar": metavar})


@dataclass(frozen=True)
class SynthesisConfig:
    """Settings of the boundary synthesis. ``T = 2 * tau`` output frames per clip.

    Defaults and why (the paper leaves all of them open):

    * ``tau = 4`` (T = 8): downstream features are computed from 8-frame snippets (Sec. 4.1) and
      TSM's standard input is 8 frames, so pre-training sees exactly the input length the encoder
      is used with.
    * ``eps_range = (1, 2)``: a transition of 2 to 4 frames leaves at least ``tau - eps = 2`` pure
      frames of each source, so both actions stay visible while the blend removes the trivial cut.
    * ``gammas = (0.5, 2.0)``: half and double speed, one slow-down and one speed-up, symmetric on a
      log scale (the paper requires only gamma != 1; add values such as 0.75 or 3.0 for variety).
    * ``t_range = None`` means ``(2, T - 2)``: at least two frame steps at each rate, so a speed
      change is visible in principle.
    * ``stride = 1``: downstream snippets are consecutive frames, so pre-training samples
      consecutive frames too ("uniform frame sampling" at the native rate).
    * ``types`` and ``probs``: all four types, equally likely (a balanced 4-way task, Table 5's
      best). Enabling two types gives the binary tasks of Table 5; labels are then 0 and 1.
    """

    tau: int = setting(4, flag="--tau", help="Half clip length: clips have T = 2*tau frames.")
    eps_range: tuple[int, int] = setting((1, 2), flag="--eps",
                                         help="diff_class transition half-width range, two values MIN MAX.")
    gammas: tuple[float, ...] = setting((0.5, 2.0), flag="--gamma", help="diff_speed factor, repeatable.")
    t_range: tuple[int, int] | None = setting(
        None, flag="--t-range", help="diff_speed change-point range, two values MIN MAX (default 2 T-2).")
    stride: int = setting(1, flag="--stride", help="Source frame stride d.")
    types: tuple[BoundaryType, ...] = setting(ALL_TYPES, flag="--types",
                                              help="Enabled boundary types, comma separated or repeated.")
    probs: tuple[float, ...] | None = setting(
        None, flag="--probs", help="Type probabilities, one per enabled type, repeatable (default: all equal).")

    def __post_init__(self) -> None:
        # Normalise user-friendly inputs (lists, strings) into the canonical frozen form.
        object.__setattr__(self, "types", tuple(BoundaryType.parse(t) for t in self.types))
        object.__setattr__(self, "eps_range", tuple(int(e) for e in self.eps_range))
        object.__setattr__(self, "gammas", tuple(float(g) for g in self.gammas))
        if self.t_range is not None:
            object.__setattr__(self, "t_range", tuple(int(v) for v in self.t_range))
        if self.probs is not None:
            object.__setattr__(self, "probs", tuple(float(p) for p in self.probs))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        if not isinstance(self.tau, int) or isinstance(self.tau, bool) or self.tau < 1:
            raise ValueError(f"tau ({self.tau!r}) must be an integer >= 1 (clips have T = 2*tau frames)")
        if not isinstance(self.stride, int) or isinstance(self.stride, bool) or self.stride < 1:
            raise ValueError(f"stride ({self.stride!r}) must be an integer >= 1")
        if len(self.types) == 0:
            raise ValueError("types is empty: enable at least one boundary type")
        if len(set(self.types)) != len(self.types):
            raise ValueError(f"types ({[t.key for t in self.types]}) lists a type twice")
        if self.probs is not None:
            if len(self.probs) != len(self.types):
                raise ValueError(
                    f"probs ({list(self.probs)}) must have one entry per enabled type "
                    f"({[t.key for t in self.types]})"
                )
            if any(p < 0 for p in self.probs) or sum(self.probs) <= 0:
                raise ValueError(f"probs ({list(self.probs)}) must be non-negative with a positive sum")
        if BoundaryType.DIFF_CLASS in self.types:
            if len(self.eps_range) != 2:
                raise ValueError(f"eps_range ({' '.join(map(str, self.eps_range))}) must be a pair (min, max)")
            lo, hi = self.eps_range
            if not (1 <= lo <= hi <= self.tau):
                raise ValueError(
                    f"eps_range ({lo} {hi}) must satisfy 1 <= min <= max <= tau ({self.tau})"
                )
        if BoundaryType.DIFF_SPEED in self.types:
            if not self.gammas:
                raise ValueError("gammas is empty but diff_speed is enabled")
            for g in self.gammas:
                if not (g > 0) or g == 1.0 or g != g or g == float("inf"):
                    raise ValueError(f"gamma ({g}) must be a finite positive number other than 1")
            lo, hi = self.resolved_t_range
            if not (1 <= lo <= hi <= self.T - 1):
                raise ValueError(
                    f"t_range ({lo} {hi}) must satisfy 1 <= min <= max <= T-1 ({self.T - 1}): "
                    "the change point needs output frames on both sides"
                )

    # ------------------------------------------------------------------ derived values
    @property
    def T(self) -> int:  # noqa: N802 - the paper's symbol
        """Number of output frames per clip (``2 * tau``)."""
        return 2 * self.tau

    @property
    def resolved_t_range(self) -> tuple[int, int]:
        """The change-point range, with the default ``(2, T-2)`` clipped into ``[1, T-1]``."""
        if self.t_range is not None:
            return self.t_range
        lo, hi = 2, self.T - 2
        if lo > hi:  # tiny clips (T <= 3): any legal change point
            lo, hi = 1, self.T - 1
        return (lo, hi)

    @property
    def type_probs(self) -> tuple[float, ...]:
        """Normalised probabilities, one per enabled type (uniform when ``probs`` is None)."""
        if self.probs is None:
            return tuple(1.0 / len(self.types) for _ in self.types)
        total = sum(self.probs)
        return tuple(p / total for p in self.probs)

    def label_of(self, boundary_type: BoundaryType) -> int:
        """Class label of a type in this task: its position among the enabled types in canonical
        order. With all four types enabled this is the type's own number (0..3)."""
        ordered = sorted(self.types)
        return ordered.index(boundary_type)

    @property
    def num_classes(self) -> int:
        return len(self.types)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(t.key for t in sorted(self.types))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["types"] = [t.key for t in self.types]
        d["eps_range"] = list(self.eps_range)
        d["gammas"] = list(self.gammas)
        d["t_range"] = list(self.t_range) if self.t_range is not None else None
        d["probs"] = list(self.probs) if self.probs is not None else None
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SynthesisConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown synthesis setting(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def with_(self, **changes: Any) -> "SynthesisConfig":
        return replace(self, **changes)


def exact(x: float) -> Fraction:
    """The decimal value a user wrote (``0.3`` is 3/10, not the nearest binary double).

    Used for the speed remap so that "nearest frame, half up" is decided exactly."""
    return Fraction(repr(float(x)))


def round_half_up(x: Fraction) -> int:
    """Nearest integer, ties towards +inf (BSP-METHOD.md: "rounds half up")."""
    return int((x + Fraction(1, 2)).__floor__())


def parse_types(values: Sequence[str] | None) -> tuple[BoundaryType, ...]:
    """CLI helper: ``["diff_class,same_speed"]`` or ``["diff_class", "same_speed"]``."""
    if not values:
        return ALL_TYPES
    out: list[BoundaryType] = []
    for v in values:
        for part in str(v).split(","):
            if part.strip():
                out.append(BoundaryType.parse(part))
    return tuple(out)


__all__ = [
    "ALL_TYPES",
    "BoundaryType",
    "ChoiceEnum",
    "NamedChoice",
    "SynthesisConfig",
    "exact",
    "parse_types",
    "round_half_up",
    "setting",
]
