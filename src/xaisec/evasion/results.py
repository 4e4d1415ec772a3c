"""The adv2 experiment's numbers as flat :class:`~xaisec.records.Metric` records (``metrics.json``).

Keys (``<attack>`` is ``pgd``, ``stadv``, ``adv2_pgd/<interpreter>``, ``adv2_stadv/<interpreter>``...):

- ``<attack>/asr``, ``/confidence`` (higher), ``/linf_max``, ``/linf_mean``, ``/l2_mean`` (perturbation size, lower);
- ``<attack>[/<interpreter>]/vs_target/{l1,l2}`` (lower), ``/vs_target/iou@k`` (higher), ``/vs_benign/...`` (none)
  (the interpreter level is left out when the attack aimed at one interpreter and only its maps were read);
- ``transfer/l1_vs_target/<attack>/<interpreter>`` (lower) and ``transfer/l1_vs_benign/...`` (none) (Table 9);
- ``detection/feature_squeezing/rates/<inputs>/<squeezer>`` (lower; ``benign``: the false-positive rate, none),
  ``detection/adaptive/<interpreter>/...``, ``detection/ensemble/rates/<inputs>``, ``detection/ensemble/joint/...``;
- ``rts_adversarial/<interpreter>/adversarial/...`` (ADV2 against RTS^A), ``.../crafted_against_plain/...``,
  ``.../noise/<kind>_<level>/<version>`` (none).

Directions are from the attacker's point of view (Zhang et al., "Interpretable Deep Learning under Fire", USENIX
Security 2020, Sec. 5).
"""
from __future__ import annotations

from typing import Any, Mapping

from ..records import Metric

_PREDICTION = {"asr": ("higher", "fraction of attacked images classified as their target class"),
               "confidence": ("higher", "mean softmax probability of the target class"),
               "linf_max": ("lower", "largest L-inf perturbation (pixels in [0,1])"),
               "linf_mean": ("lower", "mean L-inf perturbation per image"),
               "l2_mean": ("lower", "mean L2 perturbation per image")}


def _map_records(prefix: str, maps: Mapping[str, Mapping[str, float]], what: str) -> dict[str, Metric]:
    """``maps`` = {"vs_benign": {l1, l2, iou@k}, "vs_target": {...}} of one interpreter."""
    out = {}
    for ref, values in maps.items():
        against = "the target maps" if ref == "vs_target" else "the benign maps"
        for leaf, value in values.items():
            if leaf.startswith("iou@"):
                direction, text = "higher", f"IoU of the top-{leaf[4:]} pixels with {against}"
            else:
                direction, text = "lower", f"mean {leaf.upper()} distance (per pixel) to {against}"
            out[f"{prefix}/{ref}/{leaf}"] = Metric(value, direction if ref == "vs_target" else "none", f"{what}: {text}")
    return out


def attack_records(prefix: str, report: Mapping[str, Any], what: str, single: str | None = None) -> dict[str, Metric]:
    """Records of one :func:`~xaisec.evasion.evaluate.attack_report`; ``single``: the interpreter whose maps are
    filed directly under ``prefix``."""
    out = {f"{prefix}/{k}": Metric(report[k], d, f"{what}: {text}") for k, (d, text) in _PREDICTION.items() if k in report}
    for name, maps in report.get("maps", {}).items():
        sub = prefix if name == single else f"{prefix}/{name}"
        out.update(_map_records(sub, maps, f"{what}, {name} maps"))
    return out


def _rate(inputs: str, value: float, what: str) -> Metric:
    if inputs == "benign":
        return Metric(value, "none", f"{what} on benign images (false-positive rate)")
    return Metric(value, "lower", f"{what} on {inputs} inputs")


def pgd_records(numbers: Mapping[str, Any]) -> dict[str, Metric]:
    out = attack_records("pgd", numbers["pgd"], "PGD")
    for name, report in numbers["adv2_pgd"].items():
        out.update(attack_records(f"adv2_pgd/{name}", report, f"PGD-based ADV2 against {name}", single=name))
    for table, direction in (("l1_vs_target", "lower"), ("l1_vs_benign", "none")):
        against = "target" if table == "l1_vs_target" else "benign"
        for row, cols in numbers.get("transfer", {}).get(table, {}).items():
            for col, value in cols.items():
                out[f"transfer/{table}/{row}/{col}"] = Metric(
                    value, direction, f"transfer (Table 9): L1 between {col}'s maps of the inputs of attack {row} "
                                      f"and {col}'s {against} maps")
    return out


def stadv_records(numbers: Mapping[str, Any]) -> dict[str, Metric]:
    out = attack_records("stadv", numbers["stadv"], "StAdv")
    for name, report in numbers["adv2_stadv"].items():
        out.update(attack_records(f"adv2_stadv/{name}", report, f"StAdv-based ADV2 against {name}", single=name))
    return out


def detection_records(numbers: Mapping[str, Any]) -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    fs = numbers["feature_squeezing"]
    for inputs, rates in fs["rates"].items():
        for squeezer, value in rates.items():
            out[f"detection/feature_squeezing/rates/{inputs}/{squeezer}"] = _rate(
                inputs, value, f"feature squeezing ({squeezer}) detection rate")
    for squeezer, value in zip(fs["squeezers"], fs["thresholds"]):
        out[f"detection/feature_squeezing/threshold/{squeezer}"] = Metric(
            value, "none", f"feature squeezing: threshold of {squeezer}'s L1 softmax gap ({1 - fs['fpr']:.0%} quantile)")
    out["detection/feature_squeezing/threshold/joint"] = Metric(fs["joint_threshold"], "none",
                                                                "feature squeezing: threshold of the max gap")
    for name, report in fs["adaptive_attack"].items():
        out.update(attack_records(f"detection/adaptive/{name}", report,
                                  f"adaptive ADV2 against {name} and feature squeezing", single=name))
    if "ensemble" in numbers:
        e = numbers["ensemble"]
        members = ", ".join(e["members"])
        for inputs, value in e["rates"].items():
            out[f"detection/ensemble/rates/{inputs}"] = _rate(inputs, value, f"interpreter ensemble ({members}) "
                                                                              "detection rate")
        out["detection/ensemble/threshold"] = Metric(e["threshold"], "none",
                                                     f"interpreter ensemble: {e['metric']} disagreement threshold")
        out.update(attack_records("detection/ensemble/joint", e["joint_attack"], f"ADV2 against all of {members}"))
    return out


def rts_adversarial_records(numbers: Mapping[str, Any]) -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    for name, n in numbers.items():
        out.update(attack_records(f"rts_adversarial/{name}/adversarial", n["adversarial"],
                                  f"ADV2 against adversarially trained {name} ({name}^A)", single=name))
        out.update(_map_records(f"rts_adversarial/{name}/crafted_against_plain", n["crafted_against_plain"],
                                f"{name}^A maps of the inputs crafted against plain {name}"))
        for noise, row in n["noise_sensitivity_l1"].items():
            for label, value in row.items():
                relative = " relative to the benign maps' mean" if label.endswith("_relative") else ""
                out[f"rts_adversarial/{name}/noise/{noise}/{label}"] = Metric(
                    value, "none", f"L1 change of the {label.removesuffix('_relative')} maps under {noise} noise"
                                   f"{relative}")
    return out
