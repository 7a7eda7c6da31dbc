"""Learning-rate schedules by name, as factors of the base learning rate:

    constant                                  1 throughout
    cosine(warmup=0.05, final=0.0)            linear warmup, then a half cosine from 1 down to ``final``
    linear(warmup=100, final=0.0)             linear warmup, then a straight line down to ``final``
    step(milestones=[0.5, 0.75], gamma=0.1)   times ``gamma`` at each milestone (and an optional warmup)

``warmup`` and ``milestones`` are fractions of the run's budget (a float in [0, 1)) or numbers of
steps (an integer). The factor of update ``k + 1`` (``k`` updates done) is ``factor(k, total)``;
warmup rises as (k + 1) / W, so the first update is not a zero step. A run applies it with
``torch.optim.lr_scheduler.LambdaLR`` (lr = base lr x factor); a vectorized group multiplies every
slice's learning rate by the same factor, which keeps each slice its own run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from optimlab.calls import format_call, parse_call
from optimlab.errors import OptimlabError

# name -> its options and their defaults
SCHEDULES: dict[str, dict] = {
    "constant": {},
    "cosine": {"warmup": 0, "final": 0.0},
    "linear": {"warmup": 0, "final": 0.0},
    "step": {"milestones": [0.5, 0.75], "gamma": 0.1, "warmup": 0},
}
EXAMPLE = "cosine(warmup=0.05)"


@dataclass(frozen=True)
class Schedule:
    """A schedule: its name and options (those given; the defaults fill the rest)."""

    name: str = "constant"
    options: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: object) -> Schedule:
        """A schedule from its text (``constant``, ``cosine(warmup=0.05)``, ...), its options checked."""
        if isinstance(text, Schedule):
            return text
        name, options = parse_call(text, "lr schedule", EXAMPLE)
        if name not in SCHEDULES:
            raise OptimlabError(f"unknown lr schedule {name!r}; valid: {', '.join(SCHEDULES)} "
                                f"(e.g. {EXAMPLE})")
        unknown = sorted(set(options) - set(SCHEDULES[name]))
        if unknown:
            valid = ", ".join(SCHEDULES[name]) or "none"
            raise OptimlabError(f"lr schedule {name!r} has no option {', '.join(unknown)}; valid: {valid}")
        schedule = cls(name, options)
        schedule._check_values()
        return schedule

    def __str__(self) -> str:
        return format_call(self.name, self.options)

    @property
    def constant(self) -> bool:
        return self.name == "constant"

    def option(self, key: str):
        return self.options.get(key, SCHEDULES[self.name][key])

    def _check_values(self) -> None:
        where = f"lr schedule {self}"
        if "warmup" in SCHEDULES[self.name]:
            _check_point(self.option("warmup"), f"{where}: warmup", allow_zero=True)
        if "final" in SCHEDULES[self.name]:
            final = self.option("final")
            if isinstance(final, bool) or not isinstance(final, int | float) or not 0 <= final <= 1:
                raise OptimlabError(f"{where}: final is the last factor, a number in [0, 1]; got {final!r}")
        if self.name == "step":
            milestones, gamma = self.option("milestones"), self.option("gamma")
            if not isinstance(milestones, list | tuple) or not milestones:
                raise OptimlabError(f"{where}: milestones is a list like [0.5, 0.75]; got {milestones!r}")
            for m in milestones:
                _check_point(m, f"{where}: milestone", allow_zero=False)
            if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not 0 < gamma <= 1:
                raise OptimlabError(f"{where}: gamma is a factor in (0, 1]; got {gamma!r}")

    def steps(self, value: float | int, total: int) -> int:
        """A fraction of the budget or a number of steps, as steps."""
        return round(value * total) if isinstance(value, float) else int(value)

    def check(self, total: int) -> None:
        """Refuse a schedule that does not fit a budget of ``total`` steps (a warmup as long as the
        run, a milestone past its end)."""
        if self.constant:
            return
        warmup = self.steps(self.option("warmup"), total)
        if warmup >= total:
            raise OptimlabError(f"lr schedule {self}: the warmup ({warmup} steps) is not shorter than the "
                                f"run ({total} steps)")
        if self.name == "step":
            for m in self.option("milestones"):
                at = self.steps(m, total)
                if not 0 < at <= total:
                    raise OptimlabError(f"lr schedule {self}: milestone {m!r} is step {at}, outside the run "
                                        f"(1 to {total})")

    def factor(self, k: int, total: int) -> float:
        """The factor of update ``k + 1`` of a run of ``total`` updates (``k`` updates done)."""
        if self.constant:
            return 1.0
        warmup = self.steps(self.option("warmup"), total)
        if k < warmup:
            return (k + 1) / warmup
        if self.name == "step":
            hits = sum(k >= self.steps(m, total) for m in self.option("milestones"))
            return self.option("gamma") ** hits
        final = self.option("final")
        progress = (k - warmup) / max(1, total - warmup)  # 0 at the first update after the warmup
        if self.name == "cosine":
            return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
        return final + (1 - final) * (1 - progress)


def _check_point(value: object, where: str, allow_zero: bool) -> None:
    """A point of the budget: a fraction in [0, 1) (or (0, 1]) or a number of steps."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptimlabError(f"{where} is a fraction of the budget or a number of steps; got {value!r}")
    if isinstance(value, float):
        ok = (0 <= value < 1) if allow_zero else (0 < value <= 1)
        if not ok or not math.isfinite(value):
            span = "[0, 1)" if allow_zero else "(0, 1]"
            raise OptimlabError(f"{where} as a fraction of the budget is in {span}; got {value!r}")
    elif value < (0 if allow_zero else 1):
        raise OptimlabError(f"{where} in steps is an integer >= {0 if allow_zero else 1}; got {value!r}")


def schedule_text(value: object) -> str:
    """The canonical text of a schedule setting (a string or a Schedule)."""
    return str(Schedule.parse(value if value is not None else "constant"))
