"""A study's report, rebuilt from its folder alone (no Ray, no torch): results.csv, report.md, plots.

    python study_report.py sweeps/higgins2017_fig6_cpu

Reads sweeps/<study>/study.json (the plan sweep.py wrote) and each trial's result.json, and writes:

- results.csv: one row per planned trial (status, method, hyperparameters, seed, iterations, every
  score, wall time, precision);
- report.md: per setting (a method at one grid point), each score's median [min, max] over seeds,
  beside the published figures where the study file gives them; then run times;
- UDR (Duan et al. 2020, evaluation/udr.py): each trial scored against the other finished trials of its
  setting, from the codes each evaluation saved beside its JSON (eval_<iter>_udr_sample.npz); a
  column like the other scores, absent for a setting with fewer than two such trials;
- bars_<metric>.png: the study's headline metric per setting next to the published values, in the
  manner of Higgins et al. 2017, Fig. 6;
- violins.png: every score's distribution over seeds per setting, in the manner of Locatello et al. 2019.

Every file is written atomically, and only when its content changed.
"""

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from utils import atomic_write

# The summary scores of an evaluation (metrics.summary_scores), in table order, with their headings.
SCORES = {
    "beta_vae": "BetaVAE", "factor_vae": "FactorVAE", "mig": "MIG", "dci_disentanglement": "DCI disent.",
    "dci_completeness": "DCI compl.", "dci_informativeness": "DCI inform.", "sap": "SAP",
    "irs": "IRS", "modularity": "Modularity", "explicitness": "Explicitness",
    "gaussian_total_correlation": "Gauss. TC", "gaussian_wasserstein_correlation": "Gauss. WC",
    "mutual_info_score": "MI score", "udr": "UDR",
}
PERCENT = {"beta_vae", "factor_vae"}  # classifier accuracies, published in %


class ReportError(Exception):
    """A folder that holds no study; the message says what to do."""


# --------------------------------------------------------------------------- reading the folder


def load(study_dir: Path) -> tuple[dict, list[dict]]:
    """(plan, rows): the plan from study.json and one row per planned trial, in plan order."""
    plan_path = study_dir / "study.json"
    try:
        plan = json.loads(plan_path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{plan_path} not found: {study_dir} is not a study folder (sweep.py writes study.json "
                          "when it starts a study)") from None
    except ValueError as err:
        raise ReportError(f"{plan_path} is damaged ({err}); run `python sweep.py <study file> --report_only` "
                          "to write it again") from None
    rows = []
    for planned in plan["trials"]:
        folder = study_dir / planned["trial"]
        row = {**planned, "status": "not run", "scores": {}, "folder": str(folder)}
        result = _read_json(folder / "result.json")
        if result and result.get("status") == "finished":
            row.update(status="finished", scores=result.get("scores") or {}, iterations=result.get("iterations"),
                       wall_s=result.get("wall_s"), precision=result.get("precision"),
                       attempts=result.get("attempts"), note=result.get("note", ""),
                       evaluation_file=result.get("evaluation_file"))
        elif (folder / "error.txt").exists():
            row["status"] = "failed"
            error = (folder / "error.txt").read_text(errors="replace").strip().splitlines()
            row["note"] = error[-1] if error else ""
        elif (folder / "attempts.json").exists():
            row["status"] = "unfinished"
        rows.append(row)
    return plan, rows


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def score_keys(rows: list[dict]) -> list[str]:
    """The known scores first, in table order, then any other summary key found in the results."""
    found = {k for row in rows for k in row["scores"]}
    return [k for k in SCORES if k in found] + sorted(found - set(SCORES))


def settings(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Rows grouped by setting (label and grid point), in plan order: [(setting name, rows)]."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(setting_name(row), []).append(row)
    return list(groups.items())


def ran(groups: list[tuple[str, list[dict]]]) -> list[tuple[str, list[dict]]]:
    """The settings of which some trial ran: those left out by --only leave no empty slot in a plot."""
    return [(name, group) for name, group in groups if any(r["status"] != "not run" for r in group)]


def partial_scales(plan: dict) -> list[float]:
    """The evaluation scales below 1 the study's trials were scored at: such scores draw fewer points than the
    published protocol, so they cannot be set beside published numbers."""
    return sorted(scale for scale in plan.get("eval_scales", [1.0]) if scale < 1.0)


def not_comparable(plan: dict) -> str:
    scales = partial_scales(plan)
    return (f"eval_scale {', '.join(f'{s:g}' for s in scales)}: not comparable with published numbers"
            if scales else "")


def setting_name(row: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in row["params"].items())
    return f"{row['label']} ({params})" if params else row["label"]


def finished_values(group: list[dict], key: str) -> list[float]:
    return [float(r["scores"][key]) for r in group
            if r["status"] == "finished" and isinstance(r["scores"].get(key), (int, float))
            and np.isfinite(r["scores"][key])]


def spread(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    """'median [min, max]' (or the one value), '–' without values."""
    if not values:
        return "–"
    v = np.asarray(values) * scale
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{np.median(v):.{digits}f} [{v.min():.{digits}f}, {v.max():.{digits}f}]"


def udr_sample_path(row: dict) -> Path | None:
    """The UDR sample its evaluation wrote beside eval_<iter>.json (None when the trial has no evaluation)."""
    if not row.get("evaluation_file"):
        return None
    evaluation = Path(row["folder"]) / row["evaluation_file"]
    return evaluation.with_name(evaluation.stem + "_udr_sample.npz")


def _udr_sample(row: dict):
    """(indices, codes, kl or None) of a finished trial's UDR sample, or None when it has none."""
    path = udr_sample_path(row)
    if path is None:
        return None
    try:
        with np.load(path) as f:
            return f["indices"], f["codes"], f.get("kl")
    except (OSError, ValueError, KeyError):  # no file (an evaluation from before UDR), or a damaged one
        return None


def add_udr(rows: list[dict]) -> None:
    """Put each finished trial's UDR among its scores: the trial against the others of its setting that
    encoded the same images (same data and --eval_seed). Settings with fewer than two get none."""
    from evaluation import udr  # scikit-learn only when a report is built

    for _, group in settings(rows):
        by_images: dict[tuple, list] = {}
        for row in group:
            sample = _udr_sample(row) if row["status"] == "finished" else None
            if sample is not None:
                indices, codes, kl = sample
                by_images.setdefault((indices.tobytes(), codes.shape), []).append((row, codes, kl))
        for models in by_images.values():
            if len(models) < 2:
                continue
            scores = udr.udr([(codes, kl) for _, codes, kl in models])["model_scores"]
            for (row, _, _), score in zip(models, scores, strict=True):
                row["scores"] = {**row["scores"], "udr": score}


# --------------------------------------------------------------------------- writing


def _write_if_changed(path: Path, data: bytes) -> None:
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write(path, lambda f: f.write(data))


def results_csv(rows: list[dict]) -> bytes:
    params = list(dict.fromkeys(k for row in rows for k in row["params"]))
    scores = score_keys(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial", "status", "label", "method", *params, "seed", "iterations", *scores, "wall_s",
                     "precision", "attempts", "note"])
    for row in rows:
        writer.writerow([row["trial"], row["status"], row["label"], row["method"],
                         *(row["params"].get(k, "") for k in params), row["seed"], _cell(row.get("iterations")),
                         *(_cell(row["scores"].get(k)) for k in scores), _cell(row.get("wall_s")),
                         _cell(row.get("precision")), _cell(row.get("attempts")), row.get("note", "")])
    return out.getvalue().encode()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def markdown(plan: dict, rows: list[dict], pictures: dict[str, str]) -> bytes:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "unfinished", "not run")}
    scale = "" if plan["scale"] == "full" else f" (scale {plan['scale']})"
    lines = [f"# Study {plan['name']}{scale}", ""]
    if plan.get("description"):
        lines += [plan["description"], ""]
    if plan.get("source"):
        lines += [f"Source: {plan['source']}", ""]
    lines += [f"Dataset {plan['dataset']}; {plan['max_iter']} iterations; seeds {', '.join(map(str, plan['seeds']))}. "
              f"Trials: {len(rows)} planned, " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ".", ""]
    if partial_scales(plan):
        scales = ", ".join(f"{s:g}" for s in partial_scales(plan))
        lines += [f"> **Not comparable with published numbers.** The trials were scored at eval_scale {scales}, a "
                  "fraction of the evaluation protocol's sample counts, and at this scale's iterations; only the full "
                  "protocol (eval_scale 1) of fully trained models can be set beside a paper. The published column "
                  "below is there for orientation only.", ""]
    groups = settings(rows)
    keys = score_keys(rows)
    if keys:
        lines += ["## Scores", "",
                  "Median [min, max] over the seeds that finished (n); one value when n = 1.", "",
                  "| setting | method | n | " + " | ".join(SCORES.get(k, k) for k in keys) + " |",
                  "|---|---|---|" + "---|" * len(keys)]
        for name, group in groups:
            n = sum(r["status"] == "finished" for r in group)
            lines.append(f"| {name} | {group[0]['method']} | {n}/{len(group)} | "
                         + " | ".join(spread(finished_values(group, k)) for k in keys) + " |")
        lines.append("")
    else:
        notes = sorted({r.get("note") for r in rows if r["status"] == "finished" and r.get("note")})
        lines += ["## Scores", "", "No scores yet" + (": " + " ".join(notes) if notes else "."), ""]

    published = [(m, metric, facts) for m in plan["methods"] for metric, facts in (m.get("published") or {}).items()]
    if published:
        source = plan.get("published_source") or "the study file"
        ours_header = f"ours ({not_comparable(plan)})" if partial_scales(plan) else "ours"
        lines += ["## Beside the published figures", "", f"Published: {source}. Ours: median [min, max] over seeds, "
                  "in the published unit.", "", f"| setting | score | published | {ours_header} | n |",
                  "|---|---|---|---|---|"]
        for method, metric, facts in published:
            unit = 100.0 if facts["text"].endswith("%") else 1.0
            mine = [(name, group) for name, group in groups if group[0]["label"] == method["label"]] or \
                   [(method["label"], [])]
            for name, group in mine:
                values = finished_values(group, metric)
                ours = spread(values, unit, 2 if unit == 100.0 else 3) + (" %" if values and unit == 100.0 else "")
                lines.append(f"| {name} | {SCORES.get(metric, metric)} | {facts['text']} | {ours} | {len(values)} |")
        lines.append("")

    lines += ["## Runs", "", "Wall time: of each trial's last attempt. Retries: attempts beyond the first (a trial "
              "whose process died resumes from its checkpoint).", "",
              "| setting | finished | failed | wall time per trial (median [min, max]) | precision | retries |",
              "|---|---|---|---|---|---|"]
    for name, group in groups:
        done = [r for r in group if r["status"] == "finished"]
        walls = [float(r["wall_s"]) for r in done if isinstance(r.get("wall_s"), (int, float))]
        precisions = ", ".join(sorted({str(r.get("precision")) for r in done})) or "–"
        retries = sum(max(0, int(r.get("attempts") or 1) - 1) for r in done)
        lines.append(f"| {name} | {len(done)}/{len(group)} | {sum(r['status'] == 'failed' for r in group)} | "
                     f"{spread(walls, digits=1) + (' s' if walls else '')} | {precisions} | {retries} |")
    lines.append("")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["Failed trials (their folders hold train.log and error.txt):", ""]
        lines += [f"- {r['trial']}: {r.get('note', '')}" for r in failed]
        lines.append("")
    for title, file in pictures.items():
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    lines += ["Per-trial values: results.csv. Rebuild: `python study_report.py <this folder>`.", ""]
    return "\n".join(lines).encode()


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()


def bar_chart(plan: dict, rows: list[dict], metric: str) -> bytes | None:
    """The headline metric per setting (median, min-max bar), beside the published mean ± sd."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed (Agg)

    published = {m["label"]: m["published"][metric] for m in plan["methods"] if metric in (m.get("published") or {})}
    groups = [(name, group) for name, group in ran(settings(rows))
              if finished_values(group, metric) or group[0]["label"] in published]
    if not any(finished_values(group, metric) for _, group in groups):
        return None
    unit, suffix = (100.0, " (%)") if metric in PERCENT else (1.0, "")
    fig = Figure(figsize=(max(5.0, 1.2 * len(groups) + 2), 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    rng = np.random.RandomState(0)  # fixed jitter: the same data draws the same picture
    for i, (_, group) in enumerate(groups):
        values = np.asarray(finished_values(group, metric)) * unit
        if len(values):
            median = np.median(values)
            ax.bar(i - 0.2, median, 0.38, color="tab:blue", label="ours (median, min–max)" if i == 0 else None,
                   yerr=[[median - values.min()], [values.max() - median]], capsize=3)
            ax.scatter(i - 0.2 + rng.uniform(-0.08, 0.08, len(values)), values, s=10, color="black", zorder=3)
        facts = published.get(group[0]["label"])
        if facts:
            ax.bar(i + 0.2, facts["mean"] * unit, 0.38, color="lightgray", hatch="//", edgecolor="gray",
                   yerr=facts["spread"] * unit, capsize=3, label="published (mean ± sd)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), loc="lower right", fontsize=8)
    ax.set_xticks(x, [name for name, _ in groups], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(SCORES.get(metric, metric) + suffix)
    ax.set_ylim(0, 100 if unit == 100.0 else max(1.0, ax.get_ylim()[1]))
    scale = "" if plan["scale"] == "full" else f" (scale {plan['scale']})"
    warning = f"\n({not_comparable(plan)})" if partial_scales(plan) else ""
    ax.set_title(f"{plan['name']}{scale}: {SCORES.get(metric, metric)} per setting{warning}", fontsize=10)
    return _png(fig)


def violins(plan: dict, rows: list[dict]) -> bytes | None:
    """Each score's distribution over seeds, one violin per setting (points where a violin cannot be drawn)."""
    from matplotlib.figure import Figure

    keys = score_keys(rows)
    groups = ran(settings(rows))
    if not keys:
        return None
    columns = min(4, len(keys))
    n_rows = -(-len(keys) // columns)
    width = max(3.2, 0.55 * len(groups) + 1.2)
    fig = Figure(figsize=(width * columns, 3.0 * n_rows), layout="constrained")
    rng = np.random.RandomState(0)
    for index, key in enumerate(keys):
        ax = fig.add_subplot(n_rows, columns, index + 1)
        for i, (_, group) in enumerate(groups):
            values = finished_values(group, key)
            if len(set(values)) >= 2:  # a kernel density needs at least two distinct values
                parts = ax.violinplot([values], positions=[i], widths=0.8, showmedians=True)
                for body in parts["bodies"]:
                    body.set_alpha(0.4)
            if values:
                ax.scatter(i + rng.uniform(-0.1, 0.1, len(values)), values, s=8, color="black", zorder=3)
        ax.set_title(SCORES.get(key, key), fontsize=9)
        ax.set_xticks(range(len(groups)), [name for name, _ in groups], rotation=60, ha="right", fontsize=6)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlim(-0.6, len(groups) - 0.4)
    scale = "" if plan["scale"] == "full" else f" (scale {plan['scale']})"
    warning = f" ({not_comparable(plan)})" if partial_scales(plan) else ""
    fig.suptitle(f"{plan['name']}{scale}: scores over seeds per setting{warning}", fontsize=10)
    return _png(fig)


def build_report(study_dir: str | Path) -> dict[str, Path]:
    """Write results.csv, report.md and the plots under study_dir; returns their paths."""
    study_dir = Path(study_dir)
    plan, rows = load(study_dir)
    add_udr(rows)
    metric = plan.get("metric", "beta_vae")
    paths = {"csv": study_dir / "results.csv", "markdown": study_dir / "report.md"}
    _write_if_changed(paths["csv"], results_csv(rows))
    pictures = {}
    bars = bar_chart(plan, rows, metric)
    if bars is not None:
        paths["bars"] = study_dir / f"bars_{metric}.png"
        _write_if_changed(paths["bars"], bars)
        pictures[f"{SCORES.get(metric, metric)} per setting"] = paths["bars"].name
    spread_png = violins(plan, rows)
    if spread_png is not None:
        paths["violins"] = study_dir / "violins.png"
        _write_if_changed(paths["violins"], spread_png)
        pictures["Scores over seeds"] = paths["violins"].name
    _write_if_changed(paths["markdown"], markdown(plan, rows, pictures))
    return paths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Rebuild a study's results.csv, report.md and plots from its folder.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    where = p.add_argument_group("study")
    where.add_argument("study_dir", type=Path, help="the study's folder, e.g. sweeps/higgins2017_fig6")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        paths = build_report(args.study_dir)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
