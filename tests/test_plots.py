"""plots.save_curves: PNG training curves from a metrics.jsonl."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from plots import read_metrics, save_curves

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
    assert names == ["disentanglement_scores.png", "kl_divergence.png", "posterior_mean.png",
                     "posterior_variance.png", "recon_loss.png"]
    for path in paths:
        assert path.parent == tmp_path / "curves"
        _assert_real_png(path)


def test_missing_series_are_skipped(tmp_path):
    # Objective H (no C), no evaluations, no per-latent means: those figures are left out.
    records = [{k: v for k, v in _record(i, with_c=False).items() if k != "mu"} for i in range(1, 6)]
    paths = save_curves(_write(tmp_path / "metrics.jsonl", records), tmp_path / "out")
    assert sorted(p.name for p in paths) == ["kl_divergence.png", "posterior_variance.png", "recon_loss.png"]


def test_non_finite_and_partial_lines(tmp_path):
    # The trainer writes NaN/inf as strings; a killed run can leave half a line at the end.
    records = [_record(i) for i in range(1, 6)]
    records[2]["recon_loss"] = "nan"
    records[3]["kld"][0] = "inf"
    path = _write(tmp_path / "metrics.jsonl", records)
    with path.open("a") as f:
        f.write('{"iter": 600, "recon_lo')
    assert len(read_metrics(path)) == 5
    assert len(save_curves(path, tmp_path / "out")) == 4


def test_missing_or_empty_file_writes_nothing(tmp_path):
    assert save_curves(tmp_path / "absent.jsonl", tmp_path / "out") == []
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert save_curves(empty, tmp_path / "out") == []
    assert not (tmp_path / "out").exists()
