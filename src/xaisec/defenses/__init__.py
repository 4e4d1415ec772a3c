"""Defenses: input purification, adversarial-input and backdoor detectors, poisoned-data filters, model-level
inspections (Neural Cleanse), repairs (fine-pruning, Re-BN) and explanation-consistency checks.

Convention for detectors: ``fit(...)`` then ``score(...)`` (higher = more suspicious), ``detect(...)``
for the thresholded decision. ``DEFENSES`` maps names to the callables/classes below.
"""
from __future__ import annotations

from .activation_clustering import (ClassClusters, ClusteringResult, Misclustering, activation_clustering,
                                    collect_activations, misclustering, overlap_verdict)
from .explanation_consistency import ExplanationConsistency, auroc, map_agreement, spearman
from .feature_squeezing import (ADV2_SQUEEZERS, SQUEEZERS, XU_SQUEEZERS, BitDepth, FeatureSqueezingDetector,
                                MedianFilter, NonLocalMeans, build_squeezers, squeeze_consistency_loss,
                                squeeze_gaps)
from .fine_pruning import PruningCurve, channel_activations, fine_prune, pruned_copy, pruning_curve
from .neural_cleanse import NeuralCleanseResult, mad_anomaly_index, neural_cleanse
from .interpreter_ensemble import InterpreterEnsembleDetector
from .rebn import rebn, rebn_effect, statistics_shift
from .registry import DEFENSES
from .spectral_signatures import SpectralResult, spectral_scores, spectral_signatures
from .strip import STRIPDetector
from .transforms import TRANSFORM_NAMES, build_transform, jpeg_like
from .tv_denoise import denoise_sweep, total_var_min, total_variation, tv_chambolle


__all__ = [
    "ExplanationConsistency", "NeuralCleanseResult", "PruningCurve", "TRANSFORM_NAMES", "auroc", "build_transform",
    "channel_activations", "fine_prune", "jpeg_like", "mad_anomaly_index", "map_agreement", "neural_cleanse",
    "pruned_copy", "pruning_curve", "rebn", "rebn_effect", "spearman", "statistics_shift",
    "ADV2_SQUEEZERS", "DEFENSES", "SQUEEZERS", "XU_SQUEEZERS", "BitDepth", "ClassClusters", "ClusteringResult",
    "FeatureSqueezingDetector", "InterpreterEnsembleDetector", "MedianFilter", "Misclustering", "NonLocalMeans", "STRIPDetector", "SpectralResult",
    "activation_clustering", "build_squeezers", "collect_activations", "denoise_sweep", "misclustering",
    "overlap_verdict", "spectral_scores", "spectral_signatures", "squeeze_consistency_loss", "squeeze_gaps",
    "total_var_min", "total_variation", "tv_chambolle",
]
