"""The command line: the reference's flags, names, types and defaults, and its scripts."""

import shlex

import pytest
from conftest import ROOT

from main import parse_args

REFERENCE_DEFAULTS = {
    "train": True, "seed": 1, "cuda": True, "max_iter": 1_000_000, "batch_size": 64, "z_dim": 10,
    "beta": 4, "objective": "H", "model": "H", "gamma": 1000, "C_max": 25, "C_stop_iter": 100_000,
    "lr": 1e-4, "beta1": 0.9, "beta2": 0.999, "dset_dir": "data", "image_size": 64, "num_workers": 2,
    "viz_on": True, "viz_name": "main", "viz_port": 8097, "save_output": True, "output_dir": "outputs",
    "gather_step": 1000, "display_step": 10000, "save_step": 10000, "ckpt_dir": "checkpoints",
    "ckpt_name": "last",
}


def test_defaults_match_the_reference():
    args = vars(parse_args([]))
    assert {k: args[k] for k in REFERENCE_DEFAULTS} == REFERENCE_DEFAULTS
    assert args["dataset"] == "dsprites"  # the one deliberate change: runs on the embedded data


def test_iteration_counts_accept_float_literals():
    args = parse_args(["--max_iter", "1.5e6", "--C_stop_iter", "1e5", "--display_step", "2e3"])
    assert (args.max_iter, args.C_stop_iter, args.display_step) == (1_500_000, 100_000, 2000)
    assert isinstance(args.max_iter, int)


@pytest.mark.parametrize("word,value", [("yes", True), ("no", False), ("True", True), ("false", False),
                                        ("t", True), ("F", False), ("y", True), ("n", False),
                                        ("1", True), ("0", False)])
def test_booleans(word, value):
    assert parse_args(["--train", word]).train is value


def test_bad_boolean_is_an_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--viz_on", "maybe"])
    assert "--viz_on" in capsys.readouterr().err


def test_repeated_flag_keeps_the_last_value():
    assert parse_args(["--beta", "0.999", "--beta", "4"]).beta == 4


@pytest.mark.parametrize("spelling,name", [("dSprites", "dsprites"), ("CelebA", "celeba"), ("3DChairs", "3dchairs")])
def test_dataset_names_are_case_insensitive(spelling, name):
    assert parse_args(["--dataset", spelling]).dataset == name


@pytest.mark.parametrize("flag,value,listed", [("--dataset", "mnist", "dsprites"), ("--objective", "Z", "'B'"),
                                               ("--model", "C", "'H'")])
def test_unknown_choice_lists_the_choices(capsys, flag, value, listed):
    with pytest.raises(SystemExit):
        parse_args([flag, value])
    err = capsys.readouterr().err
    assert flag in err and "invalid choice" in err and listed in err


def script_argv(name: str) -> list[str]:
    """The arguments a run script passes to main.py (without the pass-through "$@")."""
    text = (ROOT / "scripts" / name).read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if "python main.py" in line)
    words = shlex.split(line)
    return [w for w in words[words.index("main.py") + 1 :] if w != "$@"]


def test_dsprites_b_script():
    args = parse_args(script_argv("run_dsprites_B.sh"))
    assert (args.objective, args.model, args.gamma, args.C_max, args.C_stop_iter) == ("B", "B", 1000, 25, 100_000)
    assert (args.lr, args.z_dim, args.max_iter, args.dataset) == (5e-4, 10, 1_500_000, "dsprites")


def test_celeba_h_script():
    args = parse_args(script_argv("run_celeba_H.sh"))
    assert (args.objective, args.model, args.beta, args.dataset) == ("H", "H", 10, "celeba")


def test_3dchairs_script_repeated_beta_keeps_the_last():
    args = parse_args(script_argv("run_3dchairs_H.sh"))
    assert (args.beta, args.beta2, args.dataset, args.z_dim) == (4, 0.999, "3dchairs", 16)


def test_scripts_pass_extra_flags_through():
    for name in ("run_dsprites_B.sh", "run_celeba_H.sh", "run_3dchairs_H.sh"):
        text = (ROOT / "scripts" / name).read_text()
        assert "set -eu" in text and '"$@"' in text


def test_help_shows_every_default():
    """Every flag's help ends with its default, or says that the default depends on the method."""
    from main import build_parser

    parser = build_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"--{action.dest} has no help"
        if action.default is None:
            assert "default" in action.help, f"--{action.dest} does not say where its default comes from"
        else:
            assert f"(default: {action.default})" in " ".join(text.split()), f"--{action.dest}: default not shown"
    assert "default per method: H 4" in " ".join(text.split())


def test_a_name_people_use_for_beta_vae_names_the_objective_meant(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(["--objective", "beta"])
    assert stop.value.code == 2
    assert "did you mean --objective H?" in capsys.readouterr().err


def test_a_hyperparameter_of_another_method_is_named_as_having_no_effect(capsys):
    args = parse_args(["--objective", "B", "--beta", "4"])
    assert args.gamma == 1000  # the run goes on with B's own weight
    err = capsys.readouterr().err
    assert "--beta 4.0 has no effect with --objective B, which uses --gamma, --C_max, --C_stop_iter" in err
    parse_args(["--objective", "H", "--beta", "4"])
    assert capsys.readouterr().err == ""  # H's own hyperparameter: nothing to say


def test_max_iter_0_on_a_fresh_run_says_nothing_is_trained(tmp_path, tiny_dsprites, capsys):
    from conftest import run_args

    from main import main

    assert main(run_args(tmp_path, tiny_dsprites, "--viz_name", "zero", "--max_iter", "0")) == 0
    out = capsys.readouterr().out
    assert "Starting fresh" in out and "Nothing to train: --max_iter is 0; no checkpoint was written." in out
    assert "checkpoint is at iteration" not in out
    assert not (tmp_path / "checkpoints" / "zero" / "last").exists()
