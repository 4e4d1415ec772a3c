"""When to stop an attack: Noppel et al.'s rule, and convergence of the attack goal.

Both rules read the per-epoch monitor record (``monitor/acc_clean``, ``monitor/asr``,
``monitor/<explainer>/map_keep``, ``monitor/<explainer>/map_goal``; measured with the ReLU model on a fixed slice
of the training images, :func:`xaisec.runs.backdoor._monitor`) and answer ``continue``, ``converged`` or
``abort``. Both abort when the best clean accuracy after ``abort_epochs`` epochs is below ``abort_acc`` (the
attack destroyed the model). Their whole state is their history, so a checkpointed :meth:`StoppingRule.state`
resumes exactly.

- :class:`EarlyStopping` (Noppel et al.'s public code of "Disguising attacks with explanation-aware backdoors"):
  over the last ``window`` epochs the clean accuracy moved by at most ``acc_tol`` and every map dissimilarity
  (kept and goal maps) by at most ``map_tol``.
- :class:`GoalConvergence`: the attack goal has stopped improving and the clean accuracy has settled; see its
  docstring.
"""
from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import ClassVar

CONTINUE, CONVERGED, ABORT = "continue", "converged", "abort"
#: the ``stopping.rule`` names
RULES = ("noppel", "goal", "none")

_ACC = "monitor/acc_clean"


@dataclass
class StoppingRule(abc.ABC):
    """The shared part: the clean-accuracy history, the abort test and checkpointing of the state."""

    name: ClassVar[str] = ""
    window: int = 4
    acc_tol: float = 0.003
    abort_epochs: int = 12
    abort_acc: float = 0.8
    accs: list[float] = field(default_factory=list)

    @abc.abstractmethod
    def observe(self, record: dict[str, float]) -> str:
        """Record one epoch's monitor record; returns ``continue``, ``converged`` or ``abort``."""

    def _aborted(self) -> bool:
        return len(self.accs) >= self.abort_epochs and max(self.accs) < self.abort_acc

    def _acc_settled(self) -> bool:
        """The clean accuracy moved by at most ``acc_tol`` over the last ``window`` epochs."""
        recent = self.accs[-self.window:]
        return len(recent) >= self.window and max(recent) - min(recent) <= self.acc_tol

    def state(self) -> dict:
        return asdict(self)

    def load(self, state: dict) -> None:
        """Continue from a checkpointed :meth:`state` (the histories; the settings stay this rule's)."""
        for key, value in state.items():
            if key in self.__dataclass_fields__ and isinstance(value, list):
                setattr(self, key, [list(v) if isinstance(v, list) else v for v in value])


@dataclass
class EarlyStopping(StoppingRule):
    """Noppel et al.'s rule: converged when, over the last ``window`` epochs, the clean accuracy moved by at most
    ``acc_tol`` and every monitored map dissimilarity by at most ``map_tol``."""

    name: ClassVar[str] = "noppel"
    map_tol: float = 0.0075
    dissims: list[list[float]] = field(default_factory=list)

    def observe(self, record: dict[str, float]) -> str:
        return self.update(record.get(_ACC, 0.0), [v for k, v in record.items() if k.startswith("monitor/") and "/map_" in k])

    def update(self, acc: float, dissims: list[float]) -> str:
        """Record one epoch (clean accuracy, map dissimilarities in a fixed order)."""
        self.accs.append(float(acc))
        self.dissims.append([float(d) for d in dissims])
        if self._aborted():
            return ABORT
        if len(self.accs) < self.window:
            return CONTINUE
        recent_maps = list(zip(*self.dissims[-self.window:]))
        maps_moved = max((max(d) - min(d) for d in recent_maps), default=0.0)
        return CONVERGED if self._acc_settled() and maps_moved <= self.map_tol else CONTINUE


def goal_losses(record: dict[str, float]) -> list[float]:
    """The attack goal of one monitor record as losses (lower is better), in a fixed order: every explainer's
    ``map_goal`` (distance of the attacked maps to the goal) and, for label-changing recipes, ``1 - asr``."""
    losses = [v for k, v in sorted(record.items()) if k.startswith("monitor/") and k.endswith("/map_goal")]
    if "monitor/asr" in record:
        losses.append(1.0 - record["monitor/asr"])
    return losses


@dataclass
class GoalConvergence(StoppingRule):
    """Train until the attack goal has converged: stop after epoch ``t >= min_epochs`` when

    - no goal loss made progress over the last ``window`` epochs: for every goal loss g (:func:`goal_losses`), the
      window's best beats the best before it by at most ``goal_rtol`` of the progress made before it,
      ``min(b) - min(g[t-window:t]) <= max(goal_rtol * (max(b) - min(b)), goal_atol)`` with ``b = g[:t-window]``
      (the absolute floor ``goal_atol`` covers a goal met from the start, such as an ASR near 100%), and
    - the clean accuracy has not dropped: the window's mean is at most ``acc_tol`` below the best before it (an
      attack still trading accuracy for its goal is not at a plateau). The mean over the window, so the
      epoch-to-epoch jitter of a constant learning rate does not decide.

    Progress is measured against the progress made so far, so one setting fits goal losses of any scale (Fang's
    frame distance, top-k suppression, 1 - ASR) and the tail that remains is small against what the attack
    achieved: with the defaults, the last 4 epochs improved the goal by less than 1% of that. An attack whose
    goal keeps improving runs to the maximum (``attack.epochs``, stop reason ``epochs``). A fixed epoch count cuts
    a still-falling loss at a point that float reductions in another order (another thread count or machine)
    shift; a plateau moves much less.
    """

    name: ClassVar[str] = "goal"
    acc_tol: float = 0.01
    goal_rtol: float = 0.01
    goal_atol: float = 0.002
    min_epochs: int = 5
    goals: list[list[float]] = field(default_factory=list)

    def observe(self, record: dict[str, float]) -> str:
        return self.update(record.get(_ACC, 0.0), goal_losses(record))

    def update(self, acc: float, losses: list[float]) -> str:
        """Record one epoch (clean accuracy, goal losses in a fixed order)."""
        self.accs.append(float(acc))
        self.goals.append([float(g) for g in losses])
        if self._aborted():
            return ABORT
        t = len(self.accs)
        if t < max(self.min_epochs, self.window + 1):
            return CONTINUE
        if sum(self.accs[t - self.window:]) / self.window < max(self.accs[:t - self.window]) - self.acc_tol:
            return CONTINUE
        for series in zip(*self.goals):
            before = series[:t - self.window]
            progress = max(before) - min(before)
            if min(before) - min(series[t - self.window:]) > max(self.goal_rtol * progress, self.goal_atol):
                return CONTINUE
        return CONVERGED


def make_rule(rule: str, **settings) -> StoppingRule | None:
    """The stopping rule named ``rule`` (``noppel``, ``goal`` or ``none`` -> None) with the settings it takes."""
    cls = {c.name: c for c in (EarlyStopping, GoalConvergence)}.get(rule)
    if cls is None:
        if rule == "none":
            return None
        raise ValueError(f"unknown stopping rule {rule!r}; known: {RULES}")
    keys = set(cls.__dataclass_fields__) - {"accs", "dissims", "goals"}
    return cls(**{k: v for k, v in settings.items() if k in keys and v is not None})
