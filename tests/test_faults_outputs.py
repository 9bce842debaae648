"""Evaluations from a checkpoint: they describe the checkpoint, write beside the training run and never over
it, and refuse a checkpoint of NaN weights before drawing anything. Companion of tests/test_faults.py."""

import hashlib
import json

import torch
from conftest import run_args

from main import main
from storage.checkpoint import load_checkpoint

QUICK = ("--batch_size", "8", "--precision", "fp32", "--gather_step", "2", "--save_output", "False")
EVAL = ("--train", "False", "--eval_metrics", "True", "--eval_scale", "0.01")


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_evaluation_from_the_checkpoint_records_its_config_and_writes_only_in_from_checkpoint(tmp_path,
                                                                                                 tiny_dsprites,
                                                                                                 capsys):
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "run", "--eval_step", "4", "--eval_scale", "0.01")
    assert main([*argv, "--max_iter", "4"]) == 0  # the training run evaluates at 4 into outputs/run/
    run_dir = tmp_path / "outputs" / "run"
    before = {p.name: sha(p) for p in run_dir.iterdir() if p.is_file() and p.name != ".run.lock"}
    assert "eval_4_scale0.01.json" in before

    assert main([*argv, *EVAL, "--beta", "7", "--max_iter", "1000000"]) == 0
    after = {p.name: sha(p) for p in run_dir.iterdir() if p.is_file() and p.name != ".run.lock"}
    assert after == before  # the run's own evaluation and metrics.jsonl untouched: nothing appended
    result = json.loads((run_dir / "from_checkpoint" / "eval_4_scale0.01.json").read_text())
    config = result["provenance"]["config"]
    assert (config["beta"], config["max_iter"]) == (4.0, 4)  # the checkpoint's, not the command line's
    records = (run_dir / "from_checkpoint" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iter"] for line in records] == [4]

    # The same evaluation again may replace its file; a different one is refused before any work.
    evaluation = run_dir / "from_checkpoint" / "eval_4_scale0.01.json"
    kept = sha(evaluation)
    capsys.readouterr()
    assert main([*argv, *EVAL, "--eval_seed", "5"]) == 1
    assert f"{evaluation} holds another evaluation (its --eval_seed differs" in capsys.readouterr().err
    assert sha(evaluation) == kept


def test_a_checkpoint_of_nan_weights_is_refused_before_any_picture(tmp_path, tiny_dsprites, capsys):
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "nan", "--max_iter", "2")
    assert main(argv) == 0
    last = tmp_path / "checkpoints" / "nan" / "last"
    checkpoint = load_checkpoint(last)
    next(iter(checkpoint["model_states"]["net"].values())).fill_(float("nan"))
    torch.save(checkpoint, last)
    capsys.readouterr()
    assert main([*argv, *EVAL, "--save_output", "True"]) == 1
    err = capsys.readouterr().err
    assert f"{last} (iteration 2) holds NaN or inf weights, so it cannot be drawn or scored" in err
    assert "training stopped" not in err and "last good checkpoint" not in err
    assert not (tmp_path / "outputs" / "nan" / "from_checkpoint").exists() or not any(
        p.is_file() for p in (tmp_path / "outputs" / "nan" / "from_checkpoint").rglob("*"))
