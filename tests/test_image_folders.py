"""Any folder of images, grey or colour, 8 or 16 bits, and seeded subsets of any dataset."""

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_args
from PIL import Image, ImageDraw

import main as main_module
from dataset import (
    DATASETS,
    DSPRITES_FILE,
    DataError,
    ImageFolder,
    Subset,
    batches,
    dataset_spec,
    load_dataset,
    load_image,
)
from main import main, parse_args
from storage.checkpoint import load_checkpoint

# The run's dataset comes from dataset.dataset_spec once main.build_solver asks for it.
WIRED = "dataset_spec" in inspect.getsource(main_module.build_solver)
needs_wiring = pytest.mark.skipif(not WIRED, reason="main.build_solver does not call dataset.dataset_spec yet, so "
                                  "--dataset folder, --channels, --distribution and --subset do not reach a run")


def face(rng: np.random.RandomState, size: int = 48) -> Image.Image:
    """A small face-like greyscale picture: a bright oval with two dark eyes and a mouth, placed at random."""
    image = Image.new("L", (size, size), int(rng.randint(20, 80)))
    draw = ImageDraw.Draw(image)
    dx, dy, width = rng.randint(-4, 5), rng.randint(-4, 5), rng.randint(14, 20)
    cx, cy = size // 2 + dx, size // 2 + dy
    draw.ellipse((cx - width, cy - width - 4, cx + width, cy + width + 4), fill=int(rng.randint(150, 230)))
    for side in (-1, 1):
        draw.ellipse((cx + side * 7 - 2, cy - 6, cx + side * 7 + 2, cy - 2), fill=10)
    draw.line((cx - 6, cy + 9 + rng.randint(-1, 2), cx + 6, cy + 9), fill=30, width=2)
    return image


@pytest.fixture
def faces(tmp_path) -> Path:
    """40 greyscale faces (PNG and JPEG, two sizes), one of them a 16-bit PNG in a subfolder."""
    folder = tmp_path / "faces"
    (folder / "more").mkdir(parents=True)
    rng = np.random.RandomState(0)
    for i in range(39):
        face(rng, 48 if i % 2 else 40).save(folder / f"face{i:02d}.{'png' if i % 3 else 'jpg'}")
    deep = np.asarray(face(rng), dtype=np.uint16) * 257  # the same picture over 0..65535
    Image.fromarray(deep).save(folder / "more" / "face16.png")
    return folder


def args_for(*flags: str):
    return parse_args(["--cuda", "False", *flags])


# --------------------------------------------------------------------------- channels and likelihood


def test_a_folder_of_grey_images_is_one_channel_and_bernoulli(faces):
    spec = dataset_spec(args_for("--dataset", "folder", "--dset_dir", str(faces)))
    assert (spec.nc, spec.distribution, spec.path(faces)) == (1, "bernoulli", faces)  # the folder is --dset_dir
    data = load_dataset(spec, faces)
    assert len(data) == 40 and data.get(torch.tensor([0, 39])).shape == (2, 1, 64, 64)


def test_a_folder_of_colour_images_is_three_channels_and_gaussian(tmp_path):
    for i in range(3):
        Image.new("RGB", (30, 30), (200, 10 * i, 0)).save(tmp_path / f"c{i}.png")
    Image.new("L", (30, 30), 9).save(tmp_path / "grey.png")  # one grey image among colour ones
    spec = dataset_spec(args_for("--dataset", "folder", "--dset_dir", str(tmp_path)))
    assert (spec.nc, spec.distribution) == (3, "gaussian")


def test_flags_override_the_detected_channels_and_likelihood(faces):
    colour = dataset_spec(args_for("--dataset", "folder", "--dset_dir", str(faces), "--channels", "3"))
    assert (colour.nc, colour.distribution) == (3, "gaussian")
    image = load_dataset(colour, faces).get(torch.tensor([1]))[0]
    assert image.shape == (3, 64, 64) and torch.equal(image[0], image[2])  # grey repeated
    gaussian = dataset_spec(args_for("--dataset", "folder", "--dset_dir", str(faces), "--distribution", "gaussian"))
    assert (gaussian.nc, gaussian.distribution) == (1, "gaussian")
    celeba_grey = dataset_spec(args_for("--dataset", "celeba", "--channels", "1"))
    assert (celeba_grey.nc, celeba_grey.distribution) == (1, "gaussian")
    assert (dataset_spec(args_for()).nc, dataset_spec(args_for()).distribution) == (1, "bernoulli")  # dSprites


def test_colour_becomes_grey_by_luma(tmp_path):
    Image.new("RGB", (64, 64), (255, 0, 0)).save(tmp_path / "red.png")
    grey = load_image(tmp_path / "red.png", channels=1)
    assert grey.shape == (1, 64, 64) and grey.dtype == torch.uint8
    assert int(grey[0, 0, 0]) == round(255 * 299 / 1000)  # ITU-R 601: 0.299 R


def test_bad_channel_and_folder_choices_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="--channels 3: dSprites images have one channel"):
        dataset_spec(args_for("--channels", "3"))
    with pytest.raises(DataError, match="--dataset folder: no folder at .*--dset_dir"):
        dataset_spec(args_for("--dataset", "folder", "--dset_dir", str(tmp_path / "absent")))
    with pytest.raises(SystemExit):
        args_for("--channels", "2")


# --------------------------------------------------------------------------- more than 8 bits


def test_16_bit_images_are_scaled_by_their_range_not_clipped(tmp_path):
    two_levels = np.full((64, 64), 300, np.uint16)  # both levels above 255: Pillow's 8-bit conversion whitens both
    two_levels[:, 32:] = 600
    Image.fromarray(two_levels).save(tmp_path / "dim.png")
    twelve_bit = (np.arange(64)[None, :].repeat(64, 0) * 4095 // 63).astype(np.uint16)  # a 12-bit sensor's ramp
    Image.fromarray(twelve_bit).save(tmp_path / "ramp.png")
    Image.fromarray(np.where(two_levels == 300, 70000, 90000).astype(np.int32)).save(tmp_path / "wide.tif")
    assert Image.open(tmp_path / "dim.png").mode == "I;16" and Image.open(tmp_path / "wide.tif").mode == "I"
    assert Image.open(tmp_path / "dim.png").convert("L").getextrema() == (255, 255)  # what clipping would give
    dim = load_image(tmp_path / "dim.png", channels=1)
    assert dim.dtype == torch.uint8 and int(dim[0, 0, 0]) == 0 and int(dim[0, 0, -1]) == 255
    rising = load_image(tmp_path / "ramp.png", channels=1)[0, 0].int()
    assert rising[0] == 0 and rising[-1] == 255 and (rising.diff() >= 0).all()  # the whole 8-bit range
    wide = load_image(tmp_path / "wide.tif", channels=3)  # 32-bit values beyond 16 bits
    assert wide.shape == (3, 64, 64) and int(wide[1, 5, 0]) == 0 and int(wide[1, 5, -1]) == 255
    flat = Image.fromarray(np.full((8, 8), 4000, np.uint16))
    flat.save(tmp_path / "flat.png")
    assert load_image(tmp_path / "flat.png", channels=1).sum() == 0  # no range: black, not white


def test_a_folder_mixing_8_and_16_bit_images_reads_them_all_as_8_bits(faces):
    data = ImageFolder(faces, channels=1)
    deep = data.files.index(faces / "more" / "face16.png")
    images = data.get(torch.tensor([0, deep]))
    assert images.dtype == torch.uint8 and data.scale == 1 / 255
    assert images[1].max() == 255 and images[1].min() == 0  # the 16-bit face, stretched over its own range
    with Image.open(faces / "more" / "face16.png") as img:
        assert img.getextrema()[1] < 65535  # although its values did not reach the top of 16 bits


# --------------------------------------------------------------------------- subsets


def test_a_subset_is_seeded_and_maps_to_the_whole_dataset(faces):
    whole = ImageFolder(faces, channels=1)
    subset = Subset(whole, 10, seed=3)
    assert len(subset) == 10 and torch.equal(subset.indices, Subset(whole, 10, seed=3).indices)
    assert not torch.equal(subset.indices, Subset(whole, 10, seed=4).indices)
    assert torch.equal(subset.get(torch.tensor([2])), whole.get(subset.indices[2:3]))
    assert torch.equal(subset[5], whole[int(subset.indices[5])])
    with pytest.raises(DataError, match="--subset 41: the dataset has only 40 images"):
        Subset(whole, 41, seed=0)


def test_a_dsprites_subset_stays_in_memory(tiny_dsprites):
    from dataclasses import replace

    from dataset import BatchOrder

    data = load_dataset(replace(DATASETS["dsprites"], subset=100, subset_seed=1), tiny_dsprites)
    assert isinstance(data, Subset) and len(data) == 100 and data.scale == 1.0
    first = next(batches(data, BatchOrder(len(data), 16, 1), 1, torch.device("cpu")))
    assert first.shape == (16, 1, 64, 64) and first.dtype == torch.float32
    identity = main_module.data_identity(parse_args(["--dset_dir", str(tiny_dsprites)]), data)
    assert identity["images"] == 100 and identity["subset_of"] == 256


# --------------------------------------------------------------------------- through main


@needs_wiring
def test_the_face_setup_runs_on_a_folder_of_grey_images(tmp_path, faces):
    """The founding documents' face run: --channels 1 --model H --objective H --z_dim 32 on a folder."""
    argv = run_args(tmp_path, faces, "--dataset", "folder", "--channels", "1", "--model", "H", "--objective", "H",
                    "--z_dim", "32", "--max_iter", "3", "--batch_size", "8", "--num_workers", "0",
                    "--viz_name", "faces")
    assert main(argv) == 0
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "faces" / "last")
    assert checkpoint["config"]["nc"] == 1 and checkpoint["model_states"]["net"]["encoder.0.weight"].shape[1] == 1
    assert checkpoint["model_states"]["net"]["encoder.11.weight"].shape[0] == 64  # 2·z_dim
    assert (tmp_path / "outputs" / "faces" / "3" / "traverse_fixed_img.gif").stat().st_size > 0


@needs_wiring
def test_subset_reaches_the_run(tmp_path, tiny_dsprites):
    argv = run_args(tmp_path, tiny_dsprites, "--subset", "64", "--max_iter", "2", "--viz_name", "sub")
    assert main(argv) == 0
    config = load_checkpoint(tmp_path / "checkpoints" / "sub" / "last")["config"]
    assert config["data"]["images"] == 64 and config["data"]["subset_of"] == 256


def test_dsprites_file_location_is_unchanged():
    assert DATASETS["dsprites"].path("d") == Path("d") / DSPRITES_FILE
