"""Training-curve figures (PNG) from a run's metrics.jsonl, like the ones in the papers.

    python plots.py outputs/<viz_name>/metrics.jsonl [out_dir] [--top_latents 10]

Works without a display and without visdom: figures are drawn with matplotlib's object API
(`matplotlib.figure.Figure`), which renders with Agg and leaves pyplot's global backend alone.
Figures adapt to the records, like the visdom windows: reconstruction loss, KL divergence
(with C when present), posterior mean and variance when their keys appear, one "losses" figure
for the other numeric scalars, and the disentanglement scores. Per-latent figures show at most
`top_latents` latents (the most informative, see loggers.pick_latents) and the mean of the rest.
Every file is written atomically: a kill never leaves a cut PNG.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import sys
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from monitoring.records import LATENT_KEYS, TOP_LATENTS, number, other_scalars, pick_latents, read_metrics

log = logging.getLogger(__name__)

__all__ = ["figures", "read_metrics", "save_curves"]


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(iterations, values) of a scalar key, over the records that have it."""
    pairs = [(number(r["iter"]), number(r[key])) for r in records if key in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _latent_rows(records: list[dict], key: str) -> list[tuple[float, list[float]]]:
    """(iteration, values) of each record holding the per-latent list `key` ('kld', 'mu', 'var')."""
    return [(number(r["iter"]), [number(v) for v in r[key]]) for r in records if isinstance(r.get(key), list)]


class _Latents:
    """Which latents the per-latent figures draw: all up to top_latents, else the most informative."""

    def __init__(self, records: list[dict], top: int):
        self.z_dim = max((len(r[k]) for r in records for k in LATENT_KEYS if isinstance(r.get(k), list)), default=0)
        latest_kld = next((r["kld"] for r in reversed(records) if isinstance(r.get("kld"), list)), None)
        self.picked = pick_latents(latest_kld, self.z_dim, top)
        self.rest = [i for i in range(self.z_dim) if i not in set(self.picked)]

    def plot(self, ax, rows: list[tuple[float, list[float]]]) -> int:
        """Draw the picked latents and the mean of the rest; return the number of legend entries."""
        # tab10 repeats its colours after ten latents; tab20 keeps up to twenty apart.
        colours = colormaps["tab10" if len(self.picked) <= 10 else "tab20"].colors
        for n, i in enumerate(self.picked):
            iters = [it for it, v in rows if len(v) > i]
            ax.plot(iters, [v[i] for _, v in rows if len(v) > i], linewidth=1.0, color=colours[n % len(colours)],
                    label=f"z{i}")
        if self.rest:
            means = []
            for _, values in rows:
                rest = [values[i] for i in self.rest if i < len(values) and math.isfinite(values[i])]
                means.append(sum(rest) / len(rest) if rest else math.nan)
            ax.plot([it for it, _ in rows], means, color="gray", linestyle="-.", linewidth=1.5,
                    label=f"mean of {len(self.rest)} others")
        return len(self.picked) + bool(self.rest)

    def suffix(self) -> str:
        return f" (top {len(self.picked)} of {self.z_dim} by KL)" if self.rest else ""


def _new_figure(ylabel: str, title: str) -> tuple[Figure, object]:
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.set(xlabel="iteration", ylabel=ylabel, title=title)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 150k, 1.5M: long runs' ticks stay short
    ax.grid(True, alpha=0.3)
    return fig, ax


def _legend(ax, count: int) -> None:
    # Beside the plot, at most 14 entries per column, in a small font: the plot keeps most of the width.
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", ncols=max(1, math.ceil(count / 14)))


def _recon(records: list[dict], latents: _Latents) -> Figure | None:
    iters, values = _series(records, "recon_loss")
    if not iters:
        return None
    fig, ax = _new_figure("reconstruction loss", "Reconstruction loss")
    ax.plot(iters, values, color="tab:blue")
    return fig


def _kl(records: list[dict], latents: _Latents) -> Figure | None:
    rows = _latent_rows(records, "kld")
    extra = {key: _series(records, key) for key in ("total_kld", "mean_kld", "C")}
    if not rows and not any(iters for iters, _ in extra.values()):
        return None
    fig, ax = _new_figure("KL divergence (nats)", "KL divergence per latent" + latents.suffix())
    count = latents.plot(ax, rows) if rows else 0
    styles = {"total_kld": ("total", dict(color="black", linewidth=2.0)),
              "mean_kld": ("mean", dict(color="gray", linestyle="--")),
              "C": ("C (target capacity)", dict(color="tab:red", linestyle=":", linewidth=2.0))}
    for key, (label, style) in styles.items():
        iters, values = extra[key]
        if iters:
            ax.plot(iters, values, label=label, **style)
            count += 1
    _legend(ax, count)
    return fig


def _per_latent(key: str, ylabel: str, title: str):
    def draw(records: list[dict], latents: _Latents) -> Figure | None:
        rows = _latent_rows(records, key)
        if not rows:
            return None
        fig, ax = _new_figure(ylabel, title + latents.suffix())
        count = latents.plot(ax, rows)
        finite = [v for _, values in rows for v in values if math.isfinite(v)]
        if key == "var" and finite and min(finite) > 0:
            ax.set_yscale("log")  # informative latents sit decades below the collapsed ones at 1
        _legend(ax, count)
        return fig

    return draw


def _losses(records: list[dict], latents: _Latents) -> Figure | None:
    series: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        for key, value in other_scalars(record).items():
            iters, values = series.setdefault(key, ([], []))
            iters.append(number(record["iter"]))
            values.append(value)
    if not series:
        return None
    fig, ax = _new_figure("value", "Losses")
    for key, (iters, values) in series.items():
        ax.plot(iters, values, linewidth=1.0, label=key)
    _legend(ax, len(series))
    return fig


def _scores(records: list[dict], latents: _Latents) -> Figure | None:
    scores: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        for name, value in (record.get("eval") or {}).items():
            iters, values = scores.setdefault(name, ([], []))
            iters.append(number(record["iter"]))
            values.append(number(value))
    if not scores:
        return None
    fig, ax = _new_figure("score", "Disentanglement scores")
    for name, (iters, values) in scores.items():
        ax.plot(iters, values, marker="o", label=name)
    _legend(ax, len(scores))
    return fig


FIGURES = {  # file name -> drawing function; a figure whose keys no record has is left out
    "recon_loss.png": _recon,
    "kl_divergence.png": _kl,
    "posterior_mean.png": _per_latent("mu", "mean of q(z|x)", "Posterior mean per latent"),
    "posterior_variance.png": _per_latent("var", "variance of q(z|x)", "Posterior variance per latent"),
    "losses.png": _losses,
    "disentanglement_scores.png": _scores,
}


def figures(records: list[dict], top_latents: int = TOP_LATENTS) -> dict[str, Figure]:
    """{file name: figure} for the curves the records hold."""
    latents = _Latents(records, top_latents)
    drawn = {name: draw(records, latents) for name, draw in FIGURES.items()}
    return {name: fig for name, fig in drawn.items() if fig is not None}


def save_curves(metrics_jsonl: Path, out_dir: Path, top_latents: int = TOP_LATENTS) -> list[Path]:
    """Write one PNG per available curve into out_dir; return the paths written.

    A missing or empty file writes nothing; unreadable lines are skipped, and a warning says how many.
    """
    from utils import atomic_write  # imports torch: not needed to read the records

    records, unreadable = read_metrics(metrics_jsonl)
    if unreadable:
        log.warning("%s: skipped %d unreadable line%s.", metrics_jsonl, unreadable, "s" * (unreadable != 1))
    written = []
    for name, fig in figures(records, top_latents).items():
        png = io.BytesIO()  # rendered in memory first: the file appears complete or not at all
        fig.savefig(png, format="png", dpi=120)
        atomic_write(Path(out_dir) / name, lambda f, png=png: f.write(png.getvalue()))
        written.append(Path(out_dir) / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw a metrics.jsonl as PNG training curves.")
    parser.add_argument("metrics", type=Path, help="outputs/<viz_name>/metrics.jsonl")
    parser.add_argument("out_dir", type=Path, nargs="?", help="default: curves/ beside the metrics file")
    parser.add_argument("--top_latents", type=int, default=TOP_LATENTS,
                        help="latents drawn one by one in per-latent figures; the rest as their mean")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    paths = save_curves(args.metrics, args.out_dir or args.metrics.parent / "curves", max(args.top_latents, 1))
    if not paths:
        print(f"no curves: {args.metrics} is missing or holds no readable records", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
