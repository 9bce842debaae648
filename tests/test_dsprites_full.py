"""The full generated dSprites file through the real loader and a real run."""

import numpy as np
import torch
from conftest import run_args

from dataset import DATASETS, DSPRITES_FILE, load_dsprites
from main import main


def test_full_file_loads_packed_with_its_factor_grid(full_dsprites):
    data = load_dsprites(full_dsprites / DSPRITES_FILE)
    assert len(data) == 737_280 and data.packed.shape == (737_280, 64, 8)
    assert data.has_factors
    # The reference's fixed traversal images are a square, an ellipse and a heart.
    shapes = {key: int(data.latents_classes[i, 1]) for key, i in DATASETS["dsprites"].traverse_indices.items()}
    assert shapes == {"fixed_square": 0, "fixed_ellipse": 1, "fixed_heart": 2}
    rng = np.random.RandomState(0)
    factors = data.sample_factors(50, rng)
    images = data.images_for_factors(factors)
    assert images.shape == (50, 1, 64, 64) and images.dtype == torch.float32
    # Looking an image up by its factors finds the row holding exactly those factors.
    index = int(factors[0] @ np.array([6 * 40 * 32 * 32, 40 * 32 * 32, 32 * 32, 32, 1]))
    assert np.array_equal(data.latents_classes[index, 1:], factors[0])


def test_full_file_has_the_real_layout_and_says_it_was_generated(full_dsprites):
    """The real file's members, shapes and dtypes (read from the .npy headers, not the 2.8 GB of images), and
    the generator's mark in its metadata."""
    import zipfile

    from loaders import dsprites_gen

    expected = {"imgs": ((737_280, 64, 64), np.uint8), "latents_classes": ((737_280, 6), np.int64),
                "latents_values": ((737_280, 6), np.float64), "metadata": ((), object)}
    with zipfile.ZipFile(full_dsprites / DSPRITES_FILE) as archive:
        assert sorted(archive.namelist()) == sorted(f"{key}.npy" for key in expected)
        for key, (shape, dtype) in expected.items():
            with archive.open(f"{key}.npy") as f:
                np.lib.format.read_magic(f)
                assert np.lib.format.read_array_header_1_0(f)[::2] == (shape, np.dtype(dtype)), key
    assert dsprites_gen.is_generated(full_dsprites / DSPRITES_FILE) is True


def test_missing_file_is_generated_and_trained_on(tmp_path, full_dsprites, capsys, monkeypatch):
    """A run on a dset_dir without the file says so, generates it, and trains with the fixed traversals."""
    from loaders import dsprites_gen

    # Generating the full file again would cost the suite 20 s; copy the session's instead.
    def generate(path, progress=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((full_dsprites / DSPRITES_FILE).read_bytes())

    monkeypatch.setattr(dsprites_gen, "generate_dsprites", generate)
    dset_dir = tmp_path / "empty"
    argv = run_args(tmp_path, dset_dir, "--max_iter", "2", "--display_step", "2", "--viz_name", "gen",
                    "--objective", "B", "--model", "B")
    assert main(argv) == 0
    assert "dSprites not found" in capsys.readouterr().out
    assert (dset_dir / DSPRITES_FILE).exists()
    folder = tmp_path / "outputs" / "gen" / "2"
    for key in ("fixed_square", "fixed_ellipse", "fixed_heart", "random_img"):
        assert (folder / f"traverse_{key}.gif").exists(), key
