"""Figures and ``report.html`` of an adv2 run: Tables 3, 4 and 9 and Figures 4-6 of Zhang et al. (2020).

:func:`make_figures` needs the run's tensors (it runs at the end of the run); :func:`build_report` needs only the
run directory (``metrics.json``, ``config.yaml``, ``figures/``), so ``xaisec report RUN_DIR`` rebuilds it.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..io import atomic_write_text
from ..maps import MapPostprocess
from ..report.html import image, page, paragraph, section, table
from .figures import comparison_figure, iou_figure, l1_figure


def _ious(m: dict) -> dict[float, float]:
    return {float(k.split("@")[1]): v for k, v in m.items() if k.startswith("iou@")}


def make_figures(s, metrics: dict) -> list[Path]:
    """Per interpreter: benign / plain / ADV2 inputs and maps with the target map (PNG); RTS vs RTS^A; IoU and L1."""
    cfg, n = s.cfg, min(s.cfg.figure_images, len(s.x))
    fig_dir = s.run_dir / "figures"
    labels = [f"{s.data.class_names[int(a)]}->{s.data.class_names[int(b)]}" for a, b in zip(s.y[:n], s.y_target[:n])]
    shown = lambda name, m: MapPostprocess(norm=s.posts[name].norm)(m[:n])  # noqa: E731  (as compared, unpooled)
    paths = []
    for family in ("pgd", "stadv"):
        for name in cfg.interpreters:
            key = f"adv2_{family}-{name}"
            if key not in s.adv:
                continue
            plain = s.maps_cache[family].get(name)
            images = {"benign": s.x[:n], family.upper(): s.adv[family][:n], "ADV2": s.adv[key][:n]}
            maps = {"benign": shown(name, s.benign[name]), "ADV2": shown(name, s.maps_cache[key][name]),
                    "target": shown(name, s.targets[name])}
            if plain is not None:
                maps[family.upper()] = shown(name, plain)
            paths.append(comparison_figure(images, maps, fig_dir / f"{key}.png", labels,
                                           f"{cfg.dataset}: {family.upper()} and {family.upper()}-based ADV2 against "
                                           f"{name} (target maps: {cfg.target})", minmax=False))
    if "adv2_pgd-rts_adv" in s.adv:
        paths.append(comparison_figure(
            {"benign": s.x[:n], "ADV2 vs RTS": s.adv["adv2_pgd-rts"][:n], "ADV2 vs RTS^A": s.adv["adv2_pgd-rts_adv"][:n]},
            {"benign": shown("rts", s.benign["rts"]), "ADV2 vs RTS": shown("rts", s.maps_cache["adv2_pgd-rts"]["rts"]),
             "ADV2 vs RTS^A": shown("rts", s.maps_cache["adv2_pgd-rts_adv"]["rts"]),
             "RTS^A target": shown("rts", s.rts_adv_maps["target"])},
            fig_dir / "rts_vs_rts_adv.png", labels, f"{cfg.dataset}: ADV2 against RTS and adversarially trained RTS^A",
            minmax=False))
    curves = {name: {"PGD": _ious(metrics["pgd"]["maps"][name]["vs_target"]),
                     "ADV2": _ious(metrics["adv2_pgd"][name]["maps"][name]["vs_target"])} for name in cfg.interpreters}
    paths.append(iou_figure(curves, fig_dir / "iou_vs_target.png", f"{cfg.dataset}: top-k IoU with the target maps"))
    bars = {"PGD": {n_: metrics["pgd"]["maps"][n_]["vs_target"]["l1"] for n_ in cfg.interpreters},
            "ADV2": {n_: metrics["adv2_pgd"][n_]["maps"][n_]["vs_target"]["l1"] for n_ in cfg.interpreters}}
    paths.append(l1_figure(bars, fig_dir / "l1_vs_target.png", f"{cfg.dataset}: L1 distance to the target maps"))
    return paths


def _f(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _attack_table(metrics: dict, names, k: str = "iou@0.2") -> str:
    headers = ["attack", "interpreter", "plain ASR", "ADV2 ASR", "ADV2 conf", "plain L1 tgt", "ADV2 L1 tgt",
               f"plain {k} tgt", f"ADV2 {k} tgt", "plain L1 ben", "ADV2 L1 ben", "ADV2 Linf"]
    rows = []
    for fam in ("pgd", "stadv"):
        if fam not in metrics:
            continue
        base = metrics[fam]
        for name in names:
            adv = metrics[f"adv2_{fam}"].get(name)
            if adv is None:
                continue
            pm, am = base["maps"].get(name), adv["maps"][name]
            get = lambda m, ref, key: _f(m[ref].get(key, "")) if m else ""  # noqa: E731
            rows.append([fam.upper(), name, _f(base["asr"]), _f(adv["asr"]), _f(adv["confidence"]),
                         get(pm, "vs_target", "l1"), get(am, "vs_target", "l1"), get(pm, "vs_target", k),
                         get(am, "vs_target", k), get(pm, "vs_benign", "l1"), get(am, "vs_benign", "l1"),
                         _f(adv["linf_max"])])
    return table(headers, rows, numeric=range(2, len(headers)))


def _matrix(rows: dict) -> str:
    cols = list(next(iter(rows.values())))
    return table(["attack aimed at", *cols], [[src, *(_f(v[c]) for c in cols)] for src, v in rows.items()],
                 numeric=range(1, len(cols) + 1))


def build_report(run_dir: str | Path) -> Path:
    """``report.html`` of an adv2 run from its directory (figures inlined)."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    setup, names = metrics["setup"], metrics["setup"]["interpreters"]
    body = [section("Setup", table(["key", "value"], [[k, _f(v)] for k, v in setup.items()]),
                    paragraph("ASR: fraction of attacked images classified as their target class; L1 = L1/(H*W) "
                              "between post-processed maps; IoU of the top-k pixels; 'tgt' = against the target "
                              "maps, 'ben' = against the benign maps.", "note"))]
    body.append(section("Attack success and map distances (Table 3, Figures 5-6)", _attack_table(metrics, names),
                        image(run_dir / "figures" / "l1_vs_target.png", "L1 distance to the target maps"),
                        image(run_dir / "figures" / "iou_vs_target.png", "top-k IoU with the target maps")))
    if "transfer" in metrics:
        body.append(section("Transferability (Table 9): L1 to each interpreter's target map", _matrix(
            metrics["transfer"]["l1_vs_target"]), paragraph("Rows: the interpreter an ADV2 attack was aimed at; "
                                                            "columns: the interpreter that reads the inputs.", "note")))
    det = metrics.get("detection", {})
    if "feature_squeezing" in det:
        fs = det["feature_squeezing"]
        squeezers = fs["squeezers"] + ["joint"]
        rows = [[k, *(_f(v[q]) for q in squeezers)] for k, v in fs["rates"].items()]
        parts = [table(["inputs", *squeezers], rows, numeric=range(1, len(squeezers) + 1)),
                 paragraph(f"Detection rate per squeezer, each threshold at the {1 - fs['fpr']:.0%} quantile of "
                           f"{fs['calibration_images']} benign images; 'joint' = max gap with one threshold.", "note")]
        if fs["adaptive_attack"]:
            parts.append(table(["adaptive ADV2 against", "ASR", "L1 tgt", "Linf"],
                               [[k, _f(v["asr"]), _f(v["maps"][k]["vs_target"]["l1"]), _f(v["linf_max"])]
                                for k, v in fs["adaptive_attack"].items()], numeric=(1, 2, 3)))
        body.append(section("Feature squeezing and the adaptive attack (Table 4)", *parts))
    if "ensemble" in det:
        e = det["ensemble"]
        body.append(section(f"Interpreter ensemble {', '.join(e['members'])} ({e['metric']} disagreement)",
                            table(["inputs", "flagged"], [[k, _f(v)] for k, v in e["rates"].items()], numeric=(1,))))
    if "rts_adversarial" in metrics:
        r = metrics["rts_adversarial"]
        rows = [[k, _f(r[k]["asr"]), _f(r[k]["maps"]["rts"]["vs_target"]["l1"]), _f(r[k]["maps"]["rts"]["vs_benign"]["l1"])]
                for k in ("rts", "rts_adv")]
        noise = [[k, _f(v["rts"]), _f(v["rts_adv"]), _f(v.get("rts_relative", "")), _f(v.get("rts_adv_relative", ""))]
                 for k, v in r["noise_sensitivity_l1"].items()]
        body.append(section("Adversarially trained RTS (RTS^A)",
                            table(["ADV2 against", "ASR", "L1 tgt", "L1 ben"], rows, numeric=(1, 2, 3)),
                            table(["noise", "RTS map change (L1)", "RTS^A map change (L1)", "RTS relative",
                                   "RTS^A relative"], noise, numeric=(1, 2, 3, 4)),
                            image(run_dir / "figures" / "rts_vs_rts_adv.png", "ADV2 against RTS and RTS^A")))
    figures = sorted((run_dir / "figures").glob("adv2_*.png"))
    body.append(section("Benign, plain and ADV2 inputs with their maps (Figure 4)",
                        *(image(p, p.stem) for p in figures)))
    if metrics.get("images_per_second"):
        body.append(section("Throughput (whole batches)", table(
            ["attack", "images/s"], [[k, _f(v)] for k, v in metrics["images_per_second"].items()], numeric=(1,))))
    path = run_dir / "report.html"
    atomic_write_text(path, page(f"xaisec adv2: {cfg.get('name', run_dir.name)}",
                                 f"ADV2 (Zhang et al., USENIX Security 2020) on {setup['dataset']}, target maps: "
                                 f"{setup['target']}", body))
    return path
