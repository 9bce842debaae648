"""plots.save_curves: PNG training curves from a metrics.jsonl."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from monitoring.plots import figures, read_metrics, save_curves

ROOT = Path(__file__).resolve().parents[1]

Z = 4


def _record(i: int, with_c: bool = True) -> dict:
    record = {"iter": 100 * i, "recon_loss": 50.0 / i, "total_kld": 2.0 * i, "mean_kld": 0.5 * i,
              "loss": 50.0 / i + 2.0 * i, "kld": [0.1 * i * (k + 1) for k in range(Z)],
              "mu": [0.01 * i - k for k in range(Z)], "var": [1.0 / (i + k) for k in range(Z)]}
    if with_c:
        record["C"] = 0.25 * i
    return record


def _write(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _assert_real_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 2000, path
    pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert pixels.std() > 5, f"{path.name} looks blank"


def test_all_curves_written(tmp_path):
    records = [_record(i) for i in range(1, 21)]
    records.insert(10, {"iter": 1000, "eval": {"beta_vae": 0.7, "mig": 0.2}})
    records.append({"iter": 2000, "eval": {"beta_vae": 0.8, "mig": 0.3}})
    paths = save_curves(_write(tmp_path / "metrics.jsonl", records), tmp_path / "curves")
    names = sorted(p.name for p in paths)
    assert names == ["disentanglement_scores.png", "kl_divergence.png", "losses.png", "posterior_mean.png",
                     "posterior_variance.png", "recon_loss.png"]
    for path in paths:
        assert path.parent == tmp_path / "curves"
        _assert_real_png(path)


def test_missing_series_are_skipped(tmp_path):
    # Objective H (no C), no evaluations, no per-latent means: those figures are left out.
    records = [{k: v for k, v in _record(i, with_c=False).items() if k not in ("mu", "loss")} for i in range(1, 6)]
    paths = save_curves(_write(tmp_path / "metrics.jsonl", records), tmp_path / "out")
    assert sorted(p.name for p in paths) == ["kl_divergence.png", "posterior_variance.png", "recon_loss.png"]
    kl = figures(records)["kl_divergence.png"].axes[0]
    assert [line.get_label() for line in kl.get_lines()] == ["z0", "z1", "z2", "z3", "total", "mean"]


def test_non_finite_values_and_unreadable_lines_are_counted(tmp_path, caplog):
    # The trainer writes NaN/inf as strings; a killed run can leave half a line at the end.
    records = [_record(i) for i in range(1, 6)]
    records[2]["recon_loss"] = "nan"
    records[3]["kld"][0] = "inf"
    path = _write(tmp_path / "metrics.jsonl", records)
    with path.open("a") as f:
        f.write('["not", "a record"]\n{"no_iter": 1}\n\n{"iter": 600, "recon_lo')
    assert read_metrics(path) == (records, 3)  # the blank line is no record and no damage
    assert len(save_curves(path, tmp_path / "out")) == 5
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"{path}: skipped 3 unreadable lines."]
    result = subprocess.run([sys.executable, "-m", "monitoring.plots", str(path), str(tmp_path / "cli")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0 and "skipped 3 unreadable lines" in result.stderr
    assert len(result.stdout.split()) == 5


def test_figures_adapt_to_the_records():
    # InfoGAN-like records carry none of the VAE keys: one losses figure with every scalar.
    infogan = [{"iter": i, "d_loss": 1.0 / i, "g_loss": 2.0 / i, "info_loss": 0.1} for i in range(1, 6)]
    drawn = figures(infogan)
    assert list(drawn) == ["losses.png"]
    assert [line.get_label() for line in drawn["losses.png"].axes[0].get_lines()] == ["d_loss", "g_loss", "info_loss"]
    # A VAE with a new loss term: the VAE figures, plus the term beside the total loss.
    tc = [{**_record(i, with_c=False), "tc_loss": 3.0 * i} for i in range(1, 6)]
    drawn = figures(tc)
    assert "C (target capacity)" not in [line.get_label() for line in drawn["kl_divergence.png"].axes[0].get_lines()]
    assert [line.get_label() for line in drawn["losses.png"].axes[0].get_lines()] == ["loss", "tc_loss"]


def test_many_latents_keep_the_plot_readable():
    z = 512
    kl_of = {5: 9.0, 100: 4.0, 300: 2.0}
    records = [{"iter": 10 * i, "kld": [kl_of.get(k, 0.001) for k in range(z)], "total_kld": 15.0, "mean_kld": 0.03,
                "mu": [0.0] * z, "var": [1.0] * z} for i in range(1, 4)]
    for name, fig in figures(records, top_latents=10).items():
        ax = fig.axes[0]
        labels = [line.get_label() for line in ax.get_lines()]
        assert len(labels) <= 13, (name, labels)  # 10 latents, the rest's mean, and total/mean
        assert labels[:10] == ["z0", "z1", "z2", "z3", "z4", "z5", "z6", "z7", "z100", "z300"], name
        assert labels[10] == "mean of 502 others"
        assert "top 10 of 512" in ax.get_title()
        fig.canvas.draw()
        assert ax.get_position().width > 0.55, f"{name}: the legend squeezed the plot"


def test_missing_or_empty_file_writes_nothing(tmp_path):
    assert save_curves(tmp_path / "absent.jsonl", tmp_path / "out") == []
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert save_curves(empty, tmp_path / "out") == []
    assert not (tmp_path / "out").exists()
