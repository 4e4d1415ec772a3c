"""``report.html`` of an adv2 run, rebuilt from the run directory alone (no model, no data): Tables 3, 4 and 9
and Figures 4-6 of Zhang et al., "Interpretable Deep Learning under Fire" (USENIX Security 2020).

Reads ``config.yaml``, ``metrics.json``, ``environment.json`` and the stage artifacts ``attack_set``, ``pgd``,
``stadv`` and ``rts_adversarial`` (``.safetensors``); draws the figures into ``figures/`` and writes one
self-contained HTML file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import DataError
from ..io import atomic_write_text
from ..records import Metric
from ..report import html as H
from ..report.panels import map_grid
from ..runs.rundir import RunDir
from .figures import iou_figure, l1_figure

ARROWS = {"higher": "↑ higher", "lower": "↓ lower", "none": "–"}
FAMILIES = (("pgd", "PGD"), ("stadv", "StAdv"))


def _f(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


class _Metrics:
    """Flat records with lookup by key parts (missing keys read as None)."""

    def __init__(self, records: dict[str, Metric]):
        self.records = records

    def __call__(self, *parts: str) -> float | None:
        m = self.records.get("/".join(parts))
        return None if m is None else m.value

    def ious(self, prefix: str) -> dict[float, float]:
        head = f"{prefix}/vs_target/iou@"
        return {float(k[len(head):]): m.value for k, m in self.records.items() if k.startswith(head)}


def _artifacts(rd: RunDir) -> dict[str, Any]:
    from ..runs.adv2 import AttackSet, Attacks

    out: dict[str, Any] = {}
    for name, cls in (("attack_set", AttackSet), ("pgd", Attacks), ("stadv", Attacks), ("rts_adversarial", Attacks)):
        path = rd / f"{name}.safetensors"
        if path.is_file():
            out[name] = cls.load(path)
    if "attack_set" not in out or "pgd" not in out:
        raise DataError(f"{rd.path} has no attack_set/pgd artifacts; finish the run with `xaisec run --resume {rd.path}`")
    return out


def draw_figures(rd: RunDir, m: _Metrics, context: dict[str, Any]) -> dict[str, Path]:
    """Figure 4 (per family and interpreter), RTS vs RTS^A, Figure 6 (IoU) and Figure 5 (L1) from the artifacts."""
    art, names = _artifacts(rd), context["interpreters"]
    s = art["attack_set"]
    pgd = art["pgd"]
    n = min(len(s.x), *(len(maps) for a in pgd.maps.values() for maps in a.values()))
    classes = context.get("class_names") or []
    label = lambda i: classes[i] if i < len(classes) else str(i)  # noqa: E731
    rows = [f"{label(int(a))}->{label(int(b))}" for a, b in zip(s.y[:n], s.y_target[:n])]
    x = s.x[:n]
    figs: dict[str, Path] = {}
    for family, title in FAMILIES:
        if family not in art:
            continue
        a = art[family]
        for name in names:
            key = f"adv2_{family}-{name}"
            if key not in a.x_adv:
                continue
            plain = a.maps.get(family, {}).get(name)
            cols = [("benign", x, None), ("benign map", x, s.benign[name][:n])]
            if plain is not None:
                cols.append((f"{title} map", a.x_adv[family][:n], plain[:n]))
            cols += [("ADV2 input", a.x_adv[key][:n], None), ("ADV2 map", a.x_adv[key][:n], a.maps[key][name][:n]),
                     ("target map", x, s.targets[name][:n])]
            figs[key] = map_grid(cols, rd.figures / f"{key}.png", rows,
                                 f"{title} and {title}-based ADV2 against {name} (target maps: {context['target']})")
    if "rts_adversarial" in art:
        r = art["rts_adversarial"]
        for name in (k[len("adv2_pgd-"):-len("_adv")] for k in r.x_adv if k.startswith("adv2_pgd-")):
            key = f"adv2_pgd-{name}_adv"
            cols = [("benign", x, s.benign[name][:n]),
                    (f"ADV2 vs {name}", pgd.x_adv[f"adv2_pgd-{name}"][:n], pgd.maps[f"adv2_pgd-{name}"][name][:n]),
                    (f"ADV2 vs {name}^A", r.x_adv[key][:n], r.maps[key][name][:n]),
                    (f"{name}^A target", x, r.maps[f"target-{name}_adv"][name][:n])]
            figs[f"{name}_vs_{name}_adv"] = map_grid(cols, rd.figures / f"{name}_vs_{name}_adv.png", rows,
                                                     f"ADV2 against {name} and adversarially trained {name}^A")
    curves = {name: {"PGD": m.ious(f"pgd/{name}"), "ADV2": m.ious(f"adv2_pgd/{name}")} for name in names}
    figs["iou"] = iou_figure(curves, rd.figures / "iou_vs_target.png", "top-k IoU with the target maps")
    bars = {"PGD": {name: m("pgd", name, "vs_target", "l1") for name in names},
            "ADV2": {name: m("adv2_pgd", name, "vs_target", "l1") for name in names}}
    figs["l1"] = l1_figure(bars, rd.figures / "l1_vs_target.png", "L1 distance to the target maps")
    return figs


def _attack_table(m: _Metrics, names: list[str], k: str = "iou@0.2") -> str:
    headers = ["attack", "interpreter", "plain ASR", "ADV2 ASR", "ADV2 conf", "plain L1 tgt", "ADV2 L1 tgt",
               f"plain {k} tgt", f"ADV2 {k} tgt", "plain L1 ben", "ADV2 L1 ben", "ADV2 Linf"]
    rows = []
    for family, title in FAMILIES:
        for name in names:
            adv = f"adv2_{family}/{name}"
            if m(adv, "asr") is None:
                continue
            rows.append([title, name, _f(m(family, "asr")), _f(m(adv, "asr")), _f(m(adv, "confidence")),
                         _f(m(family, name, "vs_target", "l1")), _f(m(adv, "vs_target", "l1")),
                         _f(m(family, name, "vs_target", k)), _f(m(adv, "vs_target", k)),
                         _f(m(family, name, "vs_benign", "l1")), _f(m(adv, "vs_benign", "l1")), _f(m(adv, "linf_max"))])
    return H.table(headers, rows, numeric=range(2, len(headers)))


def _transfer(records: dict[str, Metric]) -> str:
    head = "transfer/l1_vs_target/"
    cells: dict[str, dict[str, float]] = {}
    for key, metric in records.items():
        if key.startswith(head):
            row, col = key[len(head):].rsplit("/", 1)
            cells.setdefault(row, {})[col] = metric.value
    if not cells:
        return ""
    cols = list(next(iter(cells.values())))
    order = sorted(cells, key=lambda r: (r == "PGD", r))
    return H.section("Transferability (Table 9): L1 to each interpreter's target maps",
                     H.table(["attack aimed at", *cols], [[r, *(_f(cells[r].get(c)) for c in cols)] for r in order],
                             numeric=range(1, len(cols) + 1)),
                     H.paragraph("Rows: the interpreter an ADV2 attack was aimed at; columns: the interpreter that "
                                 "reads the inputs.", "note"))


def _detection(m: _Metrics, records: dict[str, Metric], context: dict[str, Any], cfg: dict) -> list[str]:
    parts: list[str] = []
    squeezers = context.get("squeezers")
    if squeezers:
        head = "detection/feature_squeezing/rates/"
        inputs = list(dict.fromkeys(k[len(head):].rsplit("/", 1)[0] for k in records if k.startswith(head)))
        cols = [*squeezers, "joint"]
        fpr = cfg.get("detection", {}).get("fpr", 0.05)
        body = [H.table(["inputs", *cols], [[i, *(_f(m(head + i, q)) for q in cols)] for i in inputs],
                        numeric=range(1, len(cols) + 1)),
                H.paragraph(f"Detection rate per squeezer, each threshold at the {1 - fpr:.0%} quantile of "
                            f"{cfg.get('detection', {}).get('calibration_images')} benign images; 'joint' = max gap "
                            "with one threshold.", "note")]
        adaptive = cfg.get("detection", {}).get("adaptive", [])
        if adaptive:
            body.append(H.table(["adaptive ADV2 against", "ASR", "L1 tgt", "Linf"],
                                [[a, _f(m("detection/adaptive", a, "asr")), _f(m("detection/adaptive", a, "vs_target", "l1")),
                                  _f(m("detection/adaptive", a, "linf_max"))] for a in adaptive], numeric=(1, 2, 3)))
        parts.append(H.section("Feature squeezing and the adaptive attack (Table 4)", *body))
    head = "detection/ensemble/rates/"
    rates = [[k[len(head):], _f(r.value)] for k, r in records.items() if k.startswith(head)]
    if rates:
        members = ", ".join(cfg.get("detection", {}).get("ensemble", []))
        parts.append(H.section(f"Interpreter ensemble {members} ({cfg.get('detection', {}).get('ensemble_metric')} "
                               "disagreement)", H.table(["inputs", "flagged"], rates, numeric=(1,))))
    return parts


def _rts_adversarial(m: _Metrics, records: dict[str, Metric], figs: dict[str, Path]) -> list[str]:
    names = sorted({k.split("/")[1] for k in records if k.startswith("rts_adversarial/")})
    parts = []
    for name in names:
        pre = f"rts_adversarial/{name}"
        rows = [[name, _f(m("adv2_pgd", name, "asr")), _f(m("adv2_pgd", name, "vs_target", "l1")),
                 _f(m("adv2_pgd", name, "vs_benign", "l1"))],
                [f"{name}^A", _f(m(pre, "adversarial", "asr")), _f(m(pre, "adversarial", "vs_target", "l1")),
                 _f(m(pre, "adversarial", "vs_benign", "l1"))]]
        noise_head = f"{pre}/noise/"
        levels = list(dict.fromkeys(k[len(noise_head):].split("/")[0] for k in records if k.startswith(noise_head)))
        noise = [[lv, *(_f(m(pre, "noise", lv, c)) for c in (name, f"{name}_adv", f"{name}_relative", f"{name}_adv_relative"))]
                 for lv in levels]
        parts.append(H.section(
            f"Adversarially trained {name} ({name}^A)",
            H.table(["ADV2 against", "ASR", "L1 tgt", "L1 ben"], rows, numeric=(1, 2, 3)),
            H.paragraph(f"{name}^A reading the inputs crafted against {name}: L1 to its target maps "
                        f"{_f(m(pre, 'crafted_against_plain', 'vs_target', 'l1'))}.", "note"),
            H.table(["noise", f"{name} map change (L1)", f"{name}^A map change (L1)", f"{name} relative",
                     f"{name}^A relative"], noise, numeric=(1, 2, 3, 4)),
            H.image(figs.get(f"{name}_vs_{name}_adv", Path("missing.png")), f"ADV2 against {name} and {name}^A "
                    "(each map min-max scaled, jet colour map)")))
    return parts


def _all_metrics(records: dict[str, Metric]) -> str:
    rows = [[k, _f(r.value), ARROWS[r.direction], r.description] for k, r in sorted(records.items())]
    return ("<details><summary>every metric of metrics.json</summary>"
            + H.table(["metric", "value", "better", "what"], rows, numeric=(1,), nowrap=(0, 2)) + "</details>")


def build_report(run_dir: str | Path) -> Path:
    """``report.html`` (and ``figures/``) of an adv2 run from its directory alone."""
    from ..runs.runner import read_metrics

    rd = RunDir(run_dir)
    records, context = read_metrics(rd.path)
    cfg = rd.read_config()
    env = rd.read_json("environment.json") if (rd / "environment.json").is_file() else {}
    m, names = _Metrics(records), context["interpreters"]
    figs = draw_figures(rd, m, context)
    setup = [[k, _f(v) if not isinstance(v, (dict, list)) else json.dumps(v)] for k, v in context.items()
             if k not in ("timing_s", "images_per_second", "class_names", "map_postprocess")]
    setup += [[f"maps of {n}", post] for n, post in context["map_postprocess"].items()]
    body = [H.section("Setup", H.table(["key", "value"], setup),
                      H.paragraph("ASR: fraction of attacked images classified as their target class; L1 = L1/(H*W) "
                                  "between post-processed maps; IoU of the top-k pixels; 'tgt' = against the target "
                                  "maps, 'ben' = against the benign maps. Every attacked image is a correctly "
                                  "classified test image; maps are taken for the predicted class.", "note")),
            H.section("Attack success and map distances (Table 3, Figures 5-6)", _attack_table(m, names),
                      H.image(figs["l1"], "L1 distance to the target maps"),
                      H.image(figs["iou"], "top-k IoU with the target maps"))]
    body.append(_transfer(records))
    body += _detection(m, records, context, cfg)
    body += _rts_adversarial(m, records, figs)
    grids = [H.image(path, key) for key, path in figs.items() if key.startswith("adv2_")]
    body.append(H.section("Benign, plain and ADV2 inputs with their maps (Figure 4)",
                          H.paragraph("Each map min-max scaled and overlaid on its input (jet colour map); rows: true "
                                      "class -> target class.", "note"), *grids))
    if context.get("images_per_second"):
        body.append(H.section("Throughput (whole batches)", H.table(
            ["attack", "seconds", "images/s"], [[k, _f(context["timing_s"][k]), _f(v)]
                                                for k, v in context["images_per_second"].items()], numeric=(1, 2))))
    body.append(H.section("All metrics", H.paragraph("'better' is from the attacker's point of view: "
                                                     "'higher'/'lower' is better, '–' is informative only.", "note"),
                          _all_metrics(records)))
    body.append(H.section("Configuration", H.pre(yaml.safe_dump(cfg, sort_keys=False))))
    body.append(H.section("Environment", H.pre(json.dumps(env, indent=2))))
    path = rd / "report.html"
    atomic_write_text(path, H.page(f"ADV2: {cfg.get('name', rd.path.name)}",
                                   f"ADV2 (Zhang et al., \"Interpretable Deep Learning under Fire\", USENIX Security "
                                   f"2020) on {context['dataset']} · {context['arch']} · target maps: "
                                   f"{context['target']}", body))
    return path


def headline(records: dict[str, Metric]) -> list[str]:
    """One line per attacked interpreter: ADV2's ASR and L1 to the target maps, next to PGD's."""
    m = _Metrics(records)
    names = sorted({k.split("/")[1] for k in records if k.startswith("adv2_pgd/")})
    lines = [f"PGD: ASR {_f(m('pgd', 'asr'))}"]
    for name in names:
        lines.append(f"ADV2 vs {name}: ASR {_f(m('adv2_pgd', name, 'asr'))}, L1 to target "
                     f"{_f(m('adv2_pgd', name, 'vs_target', 'l1'))} (PGD {_f(m('pgd', name, 'vs_target', 'l1'))})")
    return lines
