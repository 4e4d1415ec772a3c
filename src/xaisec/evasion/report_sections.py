"""The adv2 run's figures and ``report.html``: tables 3, 4 and 9 and figures 4-6 of Zhang et al. (2020)."""
from __future__ import annotations

from pathlib import Path

from .report import comparison_figure, html_section, html_table, iou_figure, l1_figure, write_html


def _figures(s, metrics: dict) -> list[Path]:
    cfg, n = s.cfg, min(s.cfg.figure_images, len(s.x))
    fig_dir = s.run_dir / "figures"
    names = [s.data.class_names[int(a)] + "->" + s.data.class_names[int(b)] for a, b in zip(s.y[:n], s.y_target[:n])]
    paths = []
    for family in ("pgd", "stadv"):
        for name in cfg.interpreters:
            key = f"adv2_{family}-{name}"
            if key not in s.adv:
                continue
            images = {"benign": s.x[:n], family.upper(): s.adv[family][:n], "ADV2": s.adv[key][:n]}
            plain = s.maps_cache[family].get(name)
            maps = {"benign": s.benign[name][:n], "ADV2": s.maps_cache[key][name][:n], "target": s.targets[name][:n]}
            if plain is not None:
                maps[family.upper()] = plain[:n]
            paths.append(comparison_figure(images, maps, fig_dir / f"{key}.png", names,
                                           f"{cfg.dataset}: {family.upper()} vs {family.upper()}-based ADV2 against {name}"))
    if "adv2_pgd-rts_adv" in s.adv:
        paths.append(comparison_figure(
            {"benign": s.x[:n], "ADV2 vs RTS": s.adv["adv2_pgd-rts"][:n], "ADV2 vs RTS^A": s.adv["adv2_pgd-rts_adv"][:n]},
            {"benign": s.benign["rts"][:n], "ADV2 vs RTS": s.maps_cache["adv2_pgd-rts"]["rts"][:n],
             "ADV2 vs RTS^A": s.maps_cache["adv2_pgd-rts_adv"]["rts"][:n], "RTS^A target": s.rts_adv_maps["target"][:n]},
            fig_dir / "rts_vs_rts_adv.png", names, f"{cfg.dataset}: ADV2 against RTS and adversarially trained RTS^A"))
    curves = {}
    for name in cfg.interpreters:
        curves[name] = {"PGD": _ious(metrics["pgd"]["maps"][name]["vs_target"]),
                        "ADV2": _ious(metrics["adv2_pgd"][name]["maps"][name]["vs_target"])}
    paths.append(iou_figure(curves, fig_dir / "iou_vs_target.png", f"{cfg.dataset}: top-k IoU with the target maps"))
    bars = {"PGD": {n: metrics["pgd"]["maps"][n]["vs_target"]["l1"] for n in cfg.interpreters},
            "ADV2": {n: metrics["adv2_pgd"][n]["maps"][n]["vs_target"]["l1"] for n in cfg.interpreters}}
    paths.append(l1_figure(bars, fig_dir / "l1_vs_target.png", f"{cfg.dataset}: L1 distance to the target maps"))
    return paths


def _ious(m: dict) -> dict[float, float]:
    return {float(k.split("@")[1]): v for k, v in m.items() if k.startswith("iou@")}


def _attack_rows(metrics: dict, names) -> list[dict]:
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
            k = next((key for key in am["vs_target"] if key.startswith("iou@")), None)
            rows.append({"family": fam, "interpreter": name, "plain ASR": base["asr"], "ADV2 ASR": adv["asr"],
                         "ADV2 conf": adv["confidence"],
                         "plain L1 tgt": pm["vs_target"]["l1"] if pm else "", "ADV2 L1 tgt": am["vs_target"]["l1"],
                         "plain L1 ben": pm["vs_benign"]["l1"] if pm else "", "ADV2 L1 ben": am["vs_benign"]["l1"],
                         f"plain {k} tgt": pm["vs_target"][k] if pm else "", f"ADV2 {k} tgt": am["vs_target"][k],
                         "ADV2 Linf": adv["linf_max"]})
    return rows


def write_report(s, metrics: dict) -> Path:
    """Figures and ``report.html`` of an adv2 run."""
    cfg = s.cfg
    figures = _figures(s, metrics)
    blocks = [("Setup", html_table([{k: str(v) for k, v in metrics["setup"].items()}])),
              ("Attack success and map distances (Table 3, Figures 5-6)", html_table(_attack_rows(metrics, cfg.interpreters)))]
    if "transfer" in metrics:
        rows = [{"attack aimed at": src, **dst} for src, dst in metrics["transfer"]["l1_vs_target"].items()]
        blocks.append(("Transferability: L1 to each interpreter's target map (Table 9)", html_table(rows)))
    det = metrics.get("detection", {})
    if "feature_squeezing" in det:
        fs = det["feature_squeezing"]
        rows = [{"inputs": k, **v} for k, v in fs["rates"].items()]
        blocks.append((f"Feature squeezing detection rates, thresholds at {1 - fs['fpr']:.0%} of benign (Table 4)",
                       html_table(rows)))
        if fs["adaptive_attack"]:
            rows = [{"adaptive ADV2 vs": k, "ASR": v["asr"], "L1 tgt": v["maps"][k]["vs_target"]["l1"],
                     "Linf": v["linf_max"]} for k, v in fs["adaptive_attack"].items()]
            blocks.append(("Adaptive ADV2 (with the squeezing hinge term)", html_table(rows)))
    if "ensemble" in det:
        e = det["ensemble"]
        rows = [{"inputs": k, "flagged": v} for k, v in e["rates"].items()]
        blocks.append((f"Interpreter ensemble {e['members']} ({e['metric']} disagreement)", html_table(rows)))
    if "rts_adversarial" in metrics:
        r = metrics["rts_adversarial"]
        rows = [{"interpreter": k, "ADV2 ASR": r[k]["asr"], "L1 tgt": r[k]["maps"]["rts"]["vs_target"]["l1"],
                 "L1 ben": r[k]["maps"]["rts"]["vs_benign"]["l1"]} for k in ("rts", "rts_adv")]
        blocks.append(("RTS vs adversarially trained RTS^A", html_table(rows)))
        blocks.append(("Map change under noise (L1 to the clean map)",
                       html_table([{"noise": k, **v} for k, v in r["noise_sensitivity_l1"].items()])))
    if metrics.get("images_per_second"):
        blocks.append(("Throughput (images/s, whole batches)",
                       html_table([{"attack": k, "images/s": v} for k, v in metrics["images_per_second"].items()])))
    section = html_section(f"ADV2 on {cfg.dataset}", blocks, figures, s.run_dir)
    return write_html(s.run_dir / "report.html", f"xaisec adv2: {cfg.name}", [section],
                      f"<p>Target maps: {cfg.target}. Maps are compared after: "
                      + "; ".join(f"{n}: {p.describe()}" for n, p in s.posts.items()) + ".</p>")
