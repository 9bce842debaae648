"""Short end-to-end runs: outputs, checkpoints, resume and --train False."""

import torch
from conftest import run_args

from checkpoint import describe_weights, load_checkpoint, model_from_checkpoint
from main import main


def test_three_iterations_write_checkpoint_gifs_and_reconstructions(tmp_path, tiny_dsprites, capsys):
    argv = run_args(tmp_path, tiny_dsprites, "--max_iter", "3", "--display_step", "1", "--save_step", "1",
                    "--gather_step", "1", "--objective", "B", "--model", "B", "--viz_name", "run")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Starting fresh" in out and "C:" in out and "posterior variance" in out
    for step in (1, 2, 3):
        folder = tmp_path / "outputs" / "run" / str(step)
        assert (folder / "reconstruction.png").stat().st_size > 0
        assert (folder / "traverse_random_img.gif").stat().st_size > 0
        assert (folder / "traverse_random_img.png").stat().st_size > 0
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "run" / "last")
    assert ckpt["iter"] == 3
    assert {"net"} == set(ckpt["model_states"]) and {"optim"} == set(ckpt["optim_states"])
    assert ckpt["config"]["objective"] == "B" and ckpt["config"]["nc"] == 1
    assert (tmp_path / "checkpoints" / "run" / "3").exists()  # the numbered snapshot at the end
    lines = (tmp_path / "outputs" / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_a_run_shorter_than_the_steps_still_saves_and_draws(tmp_path, tiny_dsprites):
    assert main(run_args(tmp_path, tiny_dsprites, "--max_iter", "2", "--viz_name", "short")) == 0
    assert load_checkpoint(tmp_path / "checkpoints" / "short" / "last")["iter"] == 2
    assert (tmp_path / "outputs" / "short" / "2" / "traverse_random_img.gif").exists()


def test_resume_continues_from_the_saved_iteration(tmp_path, tiny_dsprites, capsys):
    argv = run_args(tmp_path, tiny_dsprites, "--viz_name", "resume", "--save_step", "2")
    assert main(argv + ["--max_iter", "4"]) == 0
    capsys.readouterr()
    assert main(argv + ["--max_iter", "6"]) == 0
    out = capsys.readouterr().out
    assert "Resumed from" in out and "at iteration 4" in out
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "resume" / "last")
    assert ckpt["iter"] == 6
    assert ckpt["optim_states"]["optim"]["state"][0]["step"].item() == 6  # Adam continued, not restarted


def test_train_false_draws_from_the_checkpoint(tmp_path, tiny_dsprites):
    argv = run_args(tmp_path, tiny_dsprites, "--viz_name", "eval", "--max_iter", "2")
    assert main(argv) == 0
    before = load_checkpoint(tmp_path / "checkpoints" / "eval" / "last")
    assert main(argv + ["--train", "False"]) == 0
    assert (tmp_path / "outputs" / "eval" / "2" / "reconstruction.png").exists()
    after = load_checkpoint(tmp_path / "checkpoints" / "eval" / "last")
    assert after["iter"] == 2 and torch.equal(after["model_states"]["net"]["encoder.0.weight"],
                                              before["model_states"]["net"]["encoder.0.weight"])


def test_train_false_without_a_checkpoint_is_a_clear_error(tmp_path, tiny_dsprites, capsys):
    assert main(run_args(tmp_path, tiny_dsprites, "--train", "False", "--viz_name", "none")) == 1
    assert "--train False needs a checkpoint" in capsys.readouterr().err


def test_checkpoint_alone_rebuilds_its_model(tmp_path, tiny_dsprites):
    main(run_args(tmp_path, tiny_dsprites, "--viz_name", "rebuild", "--max_iter", "1", "--model", "B",
                  "--z_dim", "6"))
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "rebuild" / "last")
    model = model_from_checkpoint(ckpt)
    assert describe_weights(model.state_dict()) == {"model": "B", "z_dim": 6, "nc": 1}


def test_reference_style_checkpoint_resumes(tmp_path, tiny_dsprites, capsys):
    """A checkpoint with only the reference's keys (no config, no RNG) loads and resumes."""
    from model import BetaVAE_H

    model = BetaVAE_H(z_dim=10, nc=1)
    optim = torch.optim.Adam(model.parameters(), lr=1e-4)
    path = tmp_path / "checkpoints" / "ref" / "last"
    path.parent.mkdir(parents=True)
    win_states = {"recon": None, "kld": None, "mu": None, "var": None}
    torch.save({"iter": 5, "win_states": win_states, "model_states": {"net": model.state_dict()},
                "optim_states": {"optim": optim.state_dict()}}, path)
    assert main(run_args(tmp_path, tiny_dsprites, "--viz_name", "ref", "--max_iter", "7")) == 0
    assert "at iteration 5" in capsys.readouterr().out
    assert load_checkpoint(path)["iter"] == 7
