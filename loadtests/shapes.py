"""Load shapes of the suite: a step ramp that finds the knee, the daily curve, a spike.

`SHOP_LOAD_SHAPE` (step, daily or spike) picks one in locustfile.py, which makes it Locust's
LoadTestShape with `locust_shape`; each shape reads its knobs from the environment when it is
made. Every shape also says which measuring window a moment of the run belongs to
(`window_at`), so that the per-step figures are measured over the windows the shape drives.

This module does not import Locust (importing it monkey-patches the whole process for gevent),
so the shapes are tested, and read by the ladder, like any other code.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

RAMP_DISCARD_S = 3.0
"""Seconds at the start of each step that are not measured: users are still being started."""

DAILY_SLICE_S = 10.0
"""The daily curve is measured in slices of this many seconds."""


def _env_number(name: str, default: float, *, minimum: float) -> float:
    """A numeric knob from the environment; a clear error for a value that is not one."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def _env_int(name: str, default: int, *, minimum: int) -> int:
    value = _env_number(name, default, minimum=minimum)
    if value != int(value):
        raise ValueError(f"{name} must be a whole number, not {value:g}")
    return int(value)


@dataclass(frozen=True)
class Window:
    """One measured step: its index, the users the shape asks for, and when (in seconds of run
    time) its measurement starts and ends."""

    step: int
    users: int
    measure_from_s: float
    ends_at_s: float


class MeasuredShape:
    """A load shape that also names its measuring windows. `locust_shape` turns it into a
    Locust LoadTestShape, which provides `get_run_time`."""

    spawn_rate: float = 50.0

    def window_at(self, run_time_s: float) -> Window | None:
        """The window that `run_time_s` falls in; None once the shape has ended."""
        raise NotImplementedError

    def users_at(self, run_time_s: float) -> int | None:
        raise NotImplementedError

    def measured(self, met: bool) -> None:
        """A window has been measured; `met`: whether it met the latency objective."""

    def tick(self) -> tuple[int, float] | None:
        run_time: float = self.get_run_time()  # type: ignore[attr-defined]
        users = self.users_at(run_time)
        if users is None:
            return None
        return users, self.spawn_rate


class StepRamp(MeasuredShape):
    """Adds the same number of users at each step and holds it, to find the knee.

    Knobs: `SHOP_LOAD_STEP_USERS` users added per step (default 10), `SHOP_LOAD_STEP_S` seconds
    per step (default 20), `SHOP_LOAD_STEPS` number of steps (default 8), `SHOP_LOAD_SPAWN_RATE`
    users started per second (default 50), `SHOP_LOAD_STOP_AFTER_MISSED` (default 0: never) ends
    the ramp once that many steps in a row missed the latency objective: past the knee, more
    load only measures a longer queue. Step i (from 0) runs START_USERS + i x STEP_USERS users
    (`SHOP_LOAD_START_USERS`, default STEP_USERS: a ramp from nothing; higher for a fine pass
    around a knee found before); its first 3 seconds are not measured.
    """

    def __init__(self) -> None:
        self.step_users = _env_int("SHOP_LOAD_STEP_USERS", 10, minimum=1)
        self.start_users = _env_int("SHOP_LOAD_START_USERS", self.step_users, minimum=1)
        self.step_s = _env_number("SHOP_LOAD_STEP_S", 20.0, minimum=RAMP_DISCARD_S + 1)
        self.steps = _env_int("SHOP_LOAD_STEPS", 8, minimum=1)
        self.spawn_rate = _env_number("SHOP_LOAD_SPAWN_RATE", 50.0, minimum=0.1)
        self.stop_after_missed = _env_int("SHOP_LOAD_STOP_AFTER_MISSED", 0, minimum=0)
        self.missed_in_a_row = 0
        self.ended = False

    def measured(self, met: bool) -> None:
        self.missed_in_a_row = 0 if met else self.missed_in_a_row + 1
        if self.stop_after_missed and self.missed_in_a_row >= self.stop_after_missed:
            self.ended = True

    def window_at(self, run_time_s: float) -> Window | None:
        step = int(run_time_s // self.step_s)
        if step >= self.steps or self.ended:
            return None
        start = step * self.step_s
        return Window(
            step,
            self.start_users + step * self.step_users,
            start + RAMP_DISCARD_S,
            start + self.step_s,
        )

    def users_at(self, run_time_s: float) -> int | None:
        window = self.window_at(run_time_s)
        return None if window is None else window.users


DAILY_PHASES: tuple[tuple[float, float], ...] = (
    (0.00, 0.10),  # midnight: a tenth of the peak
    (0.20, 0.05),  # small hours: the lowest
    (0.30, 0.15),  # before work
    (0.40, 0.60),  # morning ramp
    (0.55, 0.85),
    (0.70, 1.00),  # peak
    (0.80, 0.90),
    (0.90, 0.45),  # evening
    (1.00, 0.10),  # back to night
)
"""The compressed day as (fraction of the day, fraction of the peak users); linear in between."""


class DailyCurve(MeasuredShape):
    """A day compressed into a few minutes: night, morning ramp, peak, evening (stage 6).

    Knobs: `SHOP_LOAD_DAILY_PEAK_USERS` users at the peak (default 60), `SHOP_LOAD_DAILY_S` length
    of the whole day in seconds (default 300), `SHOP_LOAD_SPAWN_RATE` (default 50). Measured in
    10-second slices, none discarded (the load changes all the time).
    """

    def __init__(self) -> None:
        self.peak_users = _env_int("SHOP_LOAD_DAILY_PEAK_USERS", 60, minimum=1)
        self.day_s = _env_number("SHOP_LOAD_DAILY_S", 300.0, minimum=DAILY_SLICE_S)
        self.spawn_rate = _env_number("SHOP_LOAD_SPAWN_RATE", 50.0, minimum=0.1)

    def users_at(self, run_time_s: float) -> int | None:
        if run_time_s >= self.day_s:
            return None
        at = run_time_s / self.day_s
        for (x0, y0), (x1, y1) in itertools.pairwise(DAILY_PHASES):
            if x0 <= at <= x1:
                fraction = y0 + (y1 - y0) * (at - x0) / (x1 - x0)
                return max(1, round(fraction * self.peak_users))
        return None  # pragma: no cover - the phases cover [0, 1]

    def window_at(self, run_time_s: float) -> Window | None:
        """The 10-s slice `run_time_s` falls in, with the users the curve asks for at its
        middle (the curve moves within a slice)."""
        if self.users_at(run_time_s) is None:
            return None
        index = int(run_time_s // DAILY_SLICE_S)
        start = index * DAILY_SLICE_S
        end = min(start + DAILY_SLICE_S, self.day_s)
        return Window(index, self.users_at((start + end) / 2) or 1, start, end)


class Spike(MeasuredShape):
    """A calm baseline, a sudden spike of ten times the users, then the calm again: does the
    shop recover, and how many errors does the spike cost?

    Knobs: `SHOP_LOAD_STEP_USERS` baseline users (default 10), `SHOP_LOAD_STEP_S` seconds per
    phase (default 20), `SHOP_LOAD_SPAWN_RATE` (default 50; the spike starts its users at 10
    times that). Three measured steps: baseline, spike, recovery.
    """

    SPIKE_FACTOR: ClassVar[int] = 10

    def __init__(self) -> None:
        self.base_users = _env_int("SHOP_LOAD_STEP_USERS", 10, minimum=1)
        self.phase_s = _env_number("SHOP_LOAD_STEP_S", 20.0, minimum=RAMP_DISCARD_S + 1)
        self.spawn_rate = _env_number("SHOP_LOAD_SPAWN_RATE", 50.0, minimum=0.1)

    def window_at(self, run_time_s: float) -> Window | None:
        phase = int(run_time_s // self.phase_s)
        if phase >= 3:
            return None
        users = self.base_users * (self.SPIKE_FACTOR if phase == 1 else 1)
        start = phase * self.phase_s
        return Window(phase, users, start + RAMP_DISCARD_S, start + self.phase_s)

    def users_at(self, run_time_s: float) -> int | None:
        window = self.window_at(run_time_s)
        return None if window is None else window.users

    def tick(self) -> tuple[int, float] | None:
        run_time: float = self.get_run_time()  # type: ignore[attr-defined]
        window = self.window_at(run_time)
        if window is None:
            return None
        rate = self.spawn_rate * (self.SPIKE_FACTOR if window.step == 1 else 1)
        return window.users, rate


SHAPES: dict[str, type[MeasuredShape]] = {"step": StepRamp, "daily": DailyCurve, "spike": Spike}


def locust_shape(shape: type[MeasuredShape]) -> type[Any]:
    """`shape` as a Locust LoadTestShape subclass of the same name and docstring. Import
    Locust's side (and its monkey-patching) only here, in the process that runs Locust."""
    from locust import LoadTestShape

    class Shape(shape, LoadTestShape):  # type: ignore[valid-type,misc]
        def __init__(self) -> None:
            LoadTestShape.__init__(self)
            shape.__init__(self)

    Shape.__name__ = Shape.__qualname__ = shape.__name__
    Shape.__doc__ = shape.__doc__
    return Shape


def chosen(name: str | None) -> type[MeasuredShape] | None:
    """The shape class `SHOP_LOAD_SHAPE` names (None when unset); ValueError for another name."""
    if name is None or not name.strip():
        return None
    try:
        return SHAPES[name.strip().lower()]
    except KeyError:
        raise ValueError(
            f"SHOP_LOAD_SHAPE={name!r} is not a shape: use one of {', '.join(SHAPES)} "
            "(or leave it unset to use -u/-r/-t)"
        ) from None


@dataclass(frozen=True)
class Popularity:
    """Which products the suite picks (`SHOP_LOAD_POPULARITY`): `skew` (the default: half the
    picks among the 20 best sellers, 30 % among the hottest fifth, 20 % anywhere), `uniform`,
    or `zipf` with its exponent (the product of rank k weighs 1/k^exponent)."""

    kind: str
    exponent: float = 0.0

    def __str__(self) -> str:
        return f"zipf:{self.exponent:g}" if self.kind == "zipf" else self.kind

    def cumulative_weights(self, products: int) -> list[float]:
        """Zipf's cumulative weights over `products` ranks (for `random.choices`)."""
        weights = (1 / rank**self.exponent for rank in range(1, products + 1))
        return list(itertools.accumulate(weights))


ZIPF_EXPONENT = 1.0
"""The exponent `zipf` alone means: the classic law of popularity (rank k weighs 1/k)."""


def popularity(text: str | None) -> Popularity:
    """`SHOP_LOAD_POPULARITY` as a Popularity; ValueError naming what is accepted."""
    raw = (text or "").strip().lower()
    if raw in ("", "skew"):
        return Popularity("skew")
    if raw == "uniform":
        return Popularity("uniform")
    kind, _, exponent = raw.partition(":")
    if kind == "zipf":
        try:
            value = float(exponent) if exponent else ZIPF_EXPONENT
        except ValueError:
            value = -1.0
        if math.isfinite(value) and 0 < value <= 5:
            return Popularity("zipf", value)
    raise ValueError(
        f"SHOP_LOAD_POPULARITY={text!r} is not a popularity: use skew, uniform or zipf:S "
        "with 0 < S <= 5 (for example zipf:1.0)"
    )


MIXES = ("talk", "orders")


def mix(text: str | None) -> str:
    """`SHOP_LOAD_MIX`: `talk` (the default: visitors, customers and the admin, about 70 %
    reads) or `orders` (buyers who only place orders, and the admin); ValueError otherwise."""
    raw = (text or "").strip().lower() or "talk"
    if raw not in MIXES:
        raise ValueError(f"SHOP_LOAD_MIX={text!r} is not a mix: use one of {', '.join(MIXES)}")
    return raw
