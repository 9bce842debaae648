"""Training-curve figures (PNG) from a run's metrics.jsonl, like the ones in the papers.

    python plots.py outputs/<viz_name>/metrics.jsonl [out_dir]

Works without a display and without visdom: figures are drawn with matplotlib's object API
(`matplotlib.figure.Figure`), which renders with Agg and leaves pyplot's global backend alone.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; [] for a missing file. Skips lines that are not JSON
    objects (a run killed mid-write can leave a partial last line)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "iter" in record:
                records.append(record)
    return records


def _number(value) -> float:
    # float() also reads the "nan"/"inf" strings metrics.jsonl uses for non-finite values.
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(iterations, values) of a scalar key, over the records that have it."""
    pairs = [(float(r["iter"]), _number(r[key])) for r in records if key in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _latent_series(records: list[dict], key: str) -> list[tuple[list[float], list[float]]]:
    """One (iterations, values) per latent of a per-latent list key such as 'kld'."""
    rows = [(float(r["iter"]), r[key]) for r in records if isinstance(r.get(key), list)]
    n = max((len(values) for _, values in rows), default=0)
    return [([it for it, v in rows if len(v) > i], [_number(v[i]) for _, v in rows if len(v) > i])
            for i in range(n)]


def _new_axes(ylabel: str, title: str):
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.set(xlabel="iteration", ylabel=ylabel, title=title)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 150k, 1.5M: long runs' ticks stay short
    ax.grid(True, alpha=0.3)
    return fig, ax


def _plot_per_latent(ax, latents: list[tuple[list[float], list[float]]]) -> None:
    # tab10 repeats its colours after ten latents; tab20 keeps up to twenty apart.
    colours = colormaps["tab10" if len(latents) <= 10 else "tab20"].colors
    for i, (iters, values) in enumerate(latents):
        ax.plot(iters, values, linewidth=1.0, color=colours[i % len(colours)], label=f"z{i + 1}")


def _legend(ax, count: int) -> None:
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", ncols=1 if count <= 12 else 2)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    return path


def _plot_recon(records: list[dict], path: Path) -> Path | None:
    iters, values = _series(records, "recon_loss")
    if not iters:
        return None
    fig, ax = _new_axes("reconstruction loss", "Reconstruction loss")
    ax.plot(iters, values, color="tab:blue")
    return _save(fig, path)


def _plot_kl(records: list[dict], path: Path) -> Path | None:
    latents = _latent_series(records, "kld")
    extra = {key: _series(records, key) for key in ("total_kld", "mean_kld", "C")}
    if not latents and not any(iters for iters, _ in extra.values()):
        return None
    fig, ax = _new_axes("KL divergence (nats)", "KL divergence per latent")
    _plot_per_latent(ax, latents)
    styles = {"total_kld": ("total", dict(color="black", linewidth=2.0)),
              "mean_kld": ("mean", dict(color="gray", linestyle="--")),
              "C": ("C (target capacity)", dict(color="tab:red", linestyle=":", linewidth=2.0))}
    for key, (label, style) in styles.items():
        iters, values = extra[key]
        if iters:
            ax.plot(iters, values, label=label, **style)
    _legend(ax, len(latents) + 3)
    return _save(fig, path)


def _plot_latents(records: list[dict], key: str, ylabel: str, title: str, path: Path) -> Path | None:
    latents = _latent_series(records, key)
    if not latents:
        return None
    fig, ax = _new_axes(ylabel, title)
    _plot_per_latent(ax, latents)
    if key == "var" and all(v > 0 for _, values in latents for v in values if math.isfinite(v)):
        ax.set_yscale("log")  # informative latents sit decades below the collapsed ones at 1
    _legend(ax, len(latents))
    return _save(fig, path)


def _plot_scores(records: list[dict], path: Path) -> Path | None:
    scores: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        for name, value in (record.get("eval") or {}).items():
            iters, values = scores.setdefault(name, ([], []))
            iters.append(float(record["iter"]))
            values.append(_number(value))
    if not scores:
        return None
    fig, ax = _new_axes("score", "Disentanglement scores")
    for name, (iters, values) in scores.items():
        ax.plot(iters, values, marker="o", label=name)
    _legend(ax, len(scores))
    return _save(fig, path)


def save_curves(metrics_jsonl: Path, out_dir: Path) -> list[Path]:
    """Write one PNG per available curve into out_dir; return the paths written.

    recon_loss.png, kl_divergence.png (per latent, total, mean and C), posterior_mean.png,
    posterior_variance.png and, when evaluations ran, disentanglement_scores.png. A series
    missing from the records is skipped; a missing or empty file writes nothing.
    """
    records = read_metrics(metrics_jsonl)
    if not records:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        _plot_recon(records, out_dir / "recon_loss.png"),
        _plot_kl(records, out_dir / "kl_divergence.png"),
        _plot_latents(records, "mu", "mean of q(z|x)", "Posterior mean per latent", out_dir / "posterior_mean.png"),
        _plot_latents(records, "var", "variance of q(z|x)", "Posterior variance per latent",
                      out_dir / "posterior_variance.png"),
        _plot_scores(records, out_dir / "disentanglement_scores.png"),
    ]
    return [path for path in written if path is not None]


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python plots.py outputs/<viz_name>/metrics.jsonl [out_dir]")
    source = Path(sys.argv[1])
    target = Path(sys.argv[2]) if len(sys.argv) == 3 else source.parent / "curves"
    paths = save_curves(source, target)
    print("\n".join(str(p) for p in paths) if paths else f"no curves: {source} is missing or empty")
