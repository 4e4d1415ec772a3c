"""Config schema of the ``fang_defenses`` experiment kind (``xaisec run fang_defenses runs=[...]``): the classical
backdoor defenses measured on finished backdoor runs, as Fang & Choromanska (AAAI 2022, Tables 2-3, Figure 4) did
for their explanation backdoors.

The models, their data, trigger and clean reference all come from the backdoor runs listed in ``runs``; the
numbers below are the sweep settings (every count is a number of images unless said otherwise).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from ..config import require
from ..errors import ConfigError, XaisecError
from ..runs.schema import DataConfig, ModelConfig, ReferenceConfig, RunConfig

#: the measurement families, in the order they run (each is one stage of the run)
MEASUREMENTS = ("neural_cleanse", "activation_clustering", "fine_pruning", "tv_denoising", "rebn",
                "input_detection", "audit")


def _fraction(value: float, where: str, upper_open: bool = True) -> None:
    ok = 0 <= value < 1 if upper_open else 0 <= value <= 1
    require(ok, f"{where} must be in [0, 1{')' if upper_open else ']'}, got {value}")


@dataclass
class NeuralCleanseSettings:
    """Neural Cleanse (Wang et al., IEEE S&P 2019) on ``repeats`` disjoint sets of ``images`` clean training images
    (the anomaly index of Fang's Figure 4a is the median over the sets); the optimiser runs ``epochs`` epochs of
    ``steps_per_epoch`` mini-batches of ``batch_size``."""

    #: clean training images per set
    images: int = 300
    #: disjoint sets (the anomaly index reported is the median over the sets; > 1 adds a stability table)
    repeats: int = 1
    #: optimisation epochs per set (early stopping per class)
    epochs: int = 120
    #: mini-batches per epoch
    steps_per_epoch: int = 3
    #: images per mini-batch
    batch_size: int = 32

    def __post_init__(self) -> None:
        for key in ("images", "repeats", "epochs", "steps_per_epoch", "batch_size"):
            require(getattr(self, key) >= 1, f"neural_cleanse.{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class ClusteringSettings:
    """Activation Clustering (Chen et al., 2019) as in Fang's Table 2: ``pairs`` clean + triggered test images,
    last hidden layer, first two principal components, 2-means, misclustering rate."""

    #: clean test images, each also triggered (at most n_eval)
    pairs: int = 320

    def __post_init__(self) -> None:
        require(self.pairs >= 2, f"activation_clustering.pairs must be >= 2, got {self.pairs}")


@dataclass
class PruningSettings:
    """Fine-pruning (Liu et al., RAID 2018) of the last conv block: clean accuracy and the attack metric at each
    pruned ``fractions``; channels ranked on ``rank_images`` clean training images; the table reports the largest
    fraction keeping clean accuracy within ``max_accuracy_drop`` (Fang, Figure 4b)."""

    #: pruned fractions of the last conv block's channels, each in [0, 1)
    fractions: list[float] = field(default_factory=lambda: [i / 10 for i in range(10)])
    #: clean training images ranking the channels by mean activation
    rank_images: int = 500
    #: clean-accuracy drop (absolute, in [0, 1]) still counted as "accuracy kept"
    max_accuracy_drop: float = 0.05

    def __post_init__(self) -> None:
        require(bool(self.fractions), "fine_pruning.fractions must list at least one pruned fraction")
        for i, f in enumerate(self.fractions):
            _fraction(f, f"fine_pruning.fractions[{i}]")
        require(self.rank_images >= 1, f"fine_pruning.rank_images must be >= 1, got {self.rank_images}")
        _fraction(self.max_accuracy_drop, "fine_pruning.max_accuracy_drop", upper_open=False)


@dataclass
class DenoisingSettings:
    """TV denoising (Chambolle) of clean and triggered inputs at each of ``weights`` (0: undenoised), ``n_iter``
    iterations; the table reports the strongest weight keeping clean accuracy within ``max_accuracy_drop`` of the
    clean reference model of the same architecture (Fang, Table 3)."""

    #: TV weights of the sweep (0: undenoised)
    weights: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.4])
    #: Chambolle iterations
    n_iter: int = 100
    #: clean-accuracy drop (absolute) against the clean reference model still counted as "accuracy kept"
    max_accuracy_drop: float = 0.05

    def __post_init__(self) -> None:
        require(bool(self.weights), "tv_denoising.weights must list at least one weight")
        for i, w in enumerate(self.weights):
            require(0 <= w <= 10, f"tv_denoising.weights[{i}] must be in [0, 10], got {w}")
        require(self.n_iter >= 1, f"tv_denoising.n_iter must be >= 1, got {self.n_iter}")
        _fraction(self.max_accuracy_drop, "tv_denoising.max_accuracy_drop", upper_open=False)


@dataclass
class ReBNSettings:
    """Re-BN: re-estimate the BatchNorm statistics on ``images`` clean training images."""

    #: clean training images the statistics are re-estimated on
    images: int = 1000

    def __post_init__(self) -> None:
        require(self.images >= 2, f"rebn.images must be >= 2, got {self.images}")


@dataclass
class DetectionSettings:
    """Input-level detectors scored on disjoint halves of the evaluation images (clean vs triggered):
    explanation consistency (calibrated on ``calibration_images`` clean training images, its threshold on the next
    ``calibration_images``), STRIP (Gao et al., ACSAC 2019; ``strip_blends`` additive blends per input) and
    Spectral Signatures (Tran et al., NeurIPS 2018)."""

    #: clean training images calibrating the detectors (and as many again for the threshold)
    calibration_images: int = 300
    #: STRIP's blends per input
    strip_blends: int = 32

    def __post_init__(self) -> None:
        require(self.calibration_images >= 4, f"input_detection.calibration_images must be >= 4, got "
                                              f"{self.calibration_images}")
        require(self.strip_blends >= 1, f"input_detection.strip_blends must be >= 1, got {self.strip_blends}")


@dataclass
class AuditSettings:
    """``xaisec audit`` on the test images after the evaluation images, with ``suspects`` of them triggered;
    ``budget`` seconds per model; ``checks``: audit checks to run (default: all of
    :data:`xaisec.audit.DEFAULT_CHECKS`)."""

    #: seconds per model
    budget: float = 300.0
    #: test images after the first n_eval, triggered and given to the audit as suspects
    suspects: int = 200
    #: audit checks to run (null: all of them)
    checks: list[str] | None = None

    def __post_init__(self) -> None:
        require(self.budget > 0, f"audit.budget must be positive (seconds), got {self.budget}")
        require(self.suspects >= 1, f"audit.suspects must be >= 1, got {self.suspects}")
        if self.checks is not None:
            from ..audit import AUDIT_CHECKS

            for name in self.checks:
                try:
                    AUDIT_CHECKS.get(name)
                except XaisecError as exc:  # the registry's message carries the suggestions
                    raise ConfigError(f"audit.checks: {exc}") from None


@dataclass
class DefensesConfig(RunConfig):
    """The classical backdoor defenses measured on finished backdoor runs, as Fang & Choromanska (AAAI 2022,
    Tables 2-3, Figure 4) did for their explanation backdoors, plus Re-BN, input-level detectors and the audit.

    ``runs``: finished backdoor run directories (``xaisec run <recipe>``). Every attacked model of these runs is
    measured, plus one clean reference model per architecture and dataset (the reference of the first run that
    uses them), each on its run's held-out split with its run's trigger: the first ``n_eval`` test images for the
    Fang-shaped measurements, the rest for the audit. ``measure`` picks the measurement families.

    The shared ``data``, ``model`` and ``reference`` sections are not used: each model's data, architecture and
    reference come from its own run's config, so they must stay unset (a value here would be silently ignored
    otherwise, so it is refused).
    """

    experiment: str = "fang_defenses"
    #: not used: each model's data comes from its backdoor run's config (leave unset)
    data: DataConfig = field(default_factory=DataConfig)
    #: not used: each model's architecture comes from its backdoor run's config (leave unset)
    model: ModelConfig = field(default_factory=ModelConfig)
    #: not used: each run's clean reference model is measured (leave unset)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    #: finished backdoor run directories (`xaisec run <recipe>`); relative paths are made absolute when loaded
    runs: list[str] = field(default_factory=list)
    #: held-out test images per model for the Fang-shaped measurements; the audit uses the rest of the test split
    n_eval: int = 400
    #: the measurement families to run (one stage each)
    measure: list[Literal[MEASUREMENTS]] = field(default_factory=lambda: list(MEASUREMENTS))
    #: Neural Cleanse (Fang, Figure 4a)
    neural_cleanse: NeuralCleanseSettings = field(default_factory=NeuralCleanseSettings)
    #: Activation Clustering (Fang, Table 2)
    activation_clustering: ClusteringSettings = field(default_factory=ClusteringSettings)
    #: fine-pruning (Fang, Figure 4b)
    fine_pruning: PruningSettings = field(default_factory=PruningSettings)
    #: TV denoising (Fang, Table 3)
    tv_denoising: DenoisingSettings = field(default_factory=DenoisingSettings)
    #: Re-BN (re-estimated BatchNorm statistics)
    rebn: ReBNSettings = field(default_factory=ReBNSettings)
    #: input-level detectors (explanation consistency, STRIP, Spectral Signatures)
    input_detection: DetectionSettings = field(default_factory=DetectionSettings)
    #: `xaisec audit` with triggered suspects
    audit: AuditSettings = field(default_factory=AuditSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        for section, default in (("data", DataConfig()), ("model", ModelConfig()), ("reference", ReferenceConfig())):
            if getattr(self, section) != default:
                raise ConfigError(f"{section}: the fang_defenses experiment takes data, model and reference from each "
                                  f"backdoor run's own config; remove the {section} section (got "
                                  f"{getattr(self, section)})")
        require(bool(self.runs), "runs must list at least one finished backdoor run directory, e.g. "
                                 "runs=[runs/default,runs/latka_badnets]")
        for i, run in enumerate(self.runs):
            require(bool(run) and "\0" not in run, f"runs[{i}] must be a folder path, got {run!r}")
        # absolute, so the stored config still names the same runs when resumed or reported from elsewhere
        self.runs = [os.path.abspath(os.path.expanduser(run)) for run in self.runs]
        require(self.n_eval >= 4, f"n_eval must be >= 4 (held-out test images per model), got {self.n_eval}")
        require(bool(self.measure), f"measure must list at least one of {list(MEASUREMENTS)}")
