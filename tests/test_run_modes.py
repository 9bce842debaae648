"""What each mode says it does: loading for pictures and scores, nothing left to train, big latent counts."""

from conftest import run_args
from PIL import Image

from main import main

QUICK = ("--batch_size", "8", "--gather_step", "1")


def test_train_false_says_loaded_and_keeps_the_training_pictures(tmp_path, tiny_dsprites, capsys):
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "pics", "--max_iter", "2")
    assert main(argv) == 0
    trained = tmp_path / "outputs" / "pics" / "2" / "reconstruction.png"
    before = trained.read_bytes()
    capsys.readouterr()
    assert main([*argv, "--train", "False"]) == 0
    out = capsys.readouterr().out
    assert "Loaded " in out and "(iteration 2)" in out
    assert "Resumed" not in out and "training" not in out.lower()
    assert trained.read_bytes() == before  # the training run's picture is not replaced
    assert (tmp_path / "outputs" / "pics" / "from_checkpoint" / "2" / "reconstruction.png").exists()


def test_a_finished_run_says_there_is_nothing_to_train(tmp_path, tiny_dsprites, capsys):
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "done")
    assert main([*argv, "--max_iter", "4"]) == 0
    capsys.readouterr()
    assert main([*argv, "--max_iter", "2"]) == 0
    out = capsys.readouterr().out
    assert "Nothing to train: the checkpoint is at iteration 4, and --max_iter is 2" in out
    assert "larger --max_iter" in out


def test_many_latents_traverse_only_the_most_informative(tmp_path, tiny_dsprites):
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "wide", "--max_iter", "1", "--z_dim", "64",
                    "--top_latents", "4")
    assert main(argv) == 0
    folder = tmp_path / "outputs" / "wide" / "1"
    with Image.open(folder / "traverse_random_img.png") as png:
        height = png.height
    assert height == 4 * (64 + 2) + 2  # four rows of 64-pixel images with 2-pixel padding
    with Image.open(folder / "traverse_random_img.gif") as gif:
        assert gif.width == 4 * (64 + 2) + 2  # each frame shows the same four latents side by side
