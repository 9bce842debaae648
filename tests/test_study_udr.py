"""UDR in a study's report: each finished trial scored against the others of its setting, from the codes its
evaluation saved (eval_<iter>_udr_sample.npz), into results.csv and report.md like every other score."""

import csv
import json

import numpy as np

from evaluation import udr
from studies import report


def write_trial(study_dir, name, codes=None, kl=None, indices=None):
    folder = study_dir / name
    (folder / "outputs" / name).mkdir(parents=True)
    result = {"status": "finished", "iterations": 10, "scores": {"mig": 0.5}, "wall_s": 1.0, "attempts": 1,
              "evaluation_file": f"outputs/{name}/eval_10.json"}
    (folder / "result.json").write_text(json.dumps(result))
    if codes is not None:
        arrays = {"indices": np.arange(len(codes)) if indices is None else indices, "codes": codes}
        if kl is not None:
            arrays["kl"] = kl
        np.savez(folder / "outputs" / name / "eval_10_udr_sample.npz", **arrays)


def test_udr_is_computed_per_setting_and_reported(tmp_path):
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    trials = [{"trial": f"b_seed{s}", "label": "b", "method": "H", "params": {"beta": 4}, "seed": s} for s in range(4)]
    trials += [{"trial": "a_seed0", "label": "a", "method": "H", "params": {"beta": 1}, "seed": 0}]
    plan = {"name": "study", "scale": "full", "dataset": "dsprites", "max_iter": 10, "seeds": [0, 1, 2, 3],
            "metric": "mig", "methods": [{"label": "a"}, {"label": "b"}], "trials": trials}
    (study_dir / "study.json").write_text(json.dumps(plan))
    codes = np.random.RandomState(0).randn(udr.NUM_POINTS, 4)
    kl = np.array([1.0, 1.0, 1.0, 0.0])  # z3 uninformative in every model
    write_trial(study_dir, "b_seed0", codes, kl)
    write_trial(study_dir, "b_seed1", codes[:, [2, 0, 1, 3]] * [-1, 1, 2, 1], kl[[2, 0, 1, 3]])
    write_trial(study_dir, "b_seed2", codes[:, [1, 2, 0, 3]], kl[[1, 2, 0, 3]])
    write_trial(study_dir, "b_seed3")  # evaluated before UDR existed: no sample, no UDR
    write_trial(study_dir, "a_seed0", codes, kl)  # alone in its setting: no UDR
    paths = report.build_report(study_dir)
    rows = {row["trial"]: row for row in csv.DictReader(paths["csv"].read_text().splitlines())}
    for name in ("b_seed0", "b_seed1", "b_seed2"):
        # The same latents, permuted, flipped, rescaled. The Lasso (alpha 0.1) shrinks each coefficient of
        # standardised codes to 0.9, and max^2 / sum of a one-entry row is that entry: 0.9, as in the library.
        assert abs(float(rows[name]["udr"]) - 0.9) < 0.02, name
    assert rows["b_seed3"]["udr"] == "" and rows["a_seed0"]["udr"] == ""
    assert " UDR |" in paths["markdown"].read_text()


def test_models_that_saw_other_images_are_not_compared(tmp_path):
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    trials = [{"trial": f"b_seed{s}", "label": "b", "method": "H", "params": {}, "seed": s} for s in range(2)]
    (study_dir / "study.json").write_text(json.dumps({"name": "s", "scale": "full", "dataset": "dsprites",
                                                      "max_iter": 10, "seeds": [0, 1], "methods": [{"label": "b"}],
                                                      "trials": trials}))
    codes = np.random.RandomState(0).randn(udr.NUM_POINTS, 3)
    write_trial(study_dir, "b_seed0", codes)
    write_trial(study_dir, "b_seed1", codes, indices=np.arange(udr.NUM_POINTS) + 1)  # another --eval_seed
    _, rows = report.load(study_dir)
    report.add_udr(rows)
    assert all("udr" not in row["scores"] for row in rows)
