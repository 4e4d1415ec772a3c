"""Noppel et al.'s early-stopping rule (public code of "Disguising attacks with explanation-aware backdoors").

Over a window of the last ``window`` epochs: stop when the clean accuracy moved by at most ``acc_tol`` and every
monitored map dissimilarity by at most ``map_tol`` (training has converged). Abort when the best clean accuracy
after ``abort_epochs`` epochs is below ``abort_acc`` (the attack destroyed the model). Measured with the ReLU
model, as every evaluation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

CONTINUE, CONVERGED, ABORT = "continue", "converged", "abort"


@dataclass
class EarlyStopping:
    window: int = 4
    acc_tol: float = 0.003
    map_tol: float = 0.0075
    abort_epochs: int = 12
    abort_acc: float = 0.8
    accs: list[float] = field(default_factory=list)
    dissims: list[list[float]] = field(default_factory=list)

    def update(self, acc: float, dissims: list[float]) -> str:
        """Record one epoch; returns ``continue``, ``converged`` or ``abort``."""
        self.accs.append(float(acc))
        self.dissims.append([float(d) for d in dissims])
        if len(self.accs) >= self.abort_epochs and max(self.accs) < self.abort_acc:
            return ABORT
        if len(self.accs) < self.window:
            return CONTINUE
        recent_acc = self.accs[-self.window:]
        recent_maps = list(zip(*self.dissims[-self.window:]))
        acc_moved = max(recent_acc) - min(recent_acc)
        maps_moved = max((max(d) - min(d) for d in recent_maps), default=0.0)
        return CONVERGED if acc_moved <= self.acc_tol and maps_moved <= self.map_tol else CONTINUE

    def state(self) -> dict:
        return asdict(self)

    def load(self, state: dict) -> None:
        """Continue from a checkpointed :meth:`state`."""
        self.accs, self.dissims = list(state["accs"]), [list(d) for d in state["dissims"]]

    @classmethod
    def from_state(cls, state: dict) -> "EarlyStopping":
        return cls(**state)
