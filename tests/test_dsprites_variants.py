"""The dSprites variants of disentanglement_lib (dsprites_color, dsprites_noisy, dsprites_scream): the pixels
each draw gives, the library's random-number order replayed exactly, training that draws anew every batch and
resumes bit for bit, and every score on small data. Scream's picture is a small JPEG the tests write."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinySprites, assert_equal, run_args
from PIL import Image
from torch import nn

from dataset import DATASETS, DSPRITES_FILE, BatchOrder, Subset, batches, load_dataset, load_dsprites
from evaluation import metrics, udr
from evaluation.evaluate import ObservedCodes, ObservedFactors, evaluate
from loaders import DataError
from loaders.dsprites_variants import SCREAM_FILE, VARIANTS, DSpritesVariant, load_scream
from main import main
from storage.checkpoint import load_checkpoint

SUMMARY_KEYS = {"beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness", "dci_informativeness",
                "sap", "irs", "modularity", "explicitness", "gaussian_total_correlation",
                "gaussian_wasserstein_correlation", "mutual_info_score"}
CPU = torch.device("cpu")


def write_scream(dset_dir: Path, size: tuple[int, int] = (150, 120)) -> Path:
    """A stand-in for The Scream at --dset_dir/scream/scream.jpg: a smooth colour picture of (width, height)."""
    path = dset_dir / SCREAM_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    pixels = np.stack([x * 255 // size[0], y * 255 // size[1], (x + y) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def variant_of(base, variant: str, folder: Path) -> DSpritesVariant:
    scream = load_scream(write_scream(folder)) if variant == "scream" else None
    return DSpritesVariant(base, variant, scream)


class LinearVAE(nn.Module):
    """A fast encoder with a posterior: (μ, logσ²) linear in the pixels of 3-channel images."""

    def __init__(self, z_dim=4):
        super().__init__()
        self.z_dim = z_dim
        self.weight = nn.Parameter(torch.randn(3 * 64 * 64, 2 * z_dim, generator=torch.Generator().manual_seed(0))
                                   / 64)

    def encode(self, x):
        h = x.flatten(1) @ self.weight
        return h[:, :self.z_dim], h[:, self.z_dim:] - 2


def library_scream(path: Path) -> np.ndarray:
    """ScreamDSprites.__init__'s picture: thumbnail to fit (350, 274), then * 1. / 255."""
    scream = Image.open(path)
    scream.thumbnail((350, 274))
    return np.array(scream) * 1. / 255.


def library_sample(base: TinySprites, variant: str, n: int, rs: np.random.RandomState,
                   scream: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """disentanglement_lib's `sample(n, rs)` for ColorDSprites / NoisyDSprites / ScreamDSprites, written out
    from its definition in numpy: factors, then (sample_observations_from_factors) the colour factor of size 1,
    the images as float32 (n, 64, 64, 1) repeated to 3 channels, then the colour, the noise or, image by
    image, the patch and its colour, all from rs. Returns the factors and float32 images (n, 3, 64, 64)."""
    factors = np.stack([rs.randint(s, size=n) for s in base.factor_sizes], axis=1)
    rs.randint(1, size=n)  # SplitDiscreteStateSpace.sample_all_factors: the one-valued colour factor
    images = base.images[base.indices_for_factors(factors)].numpy()[:, 0, :, :, None].astype(np.float32)
    observations = np.repeat(images, 3, axis=3)
    if variant == "color":
        colour = rs.uniform(0.5, 1, [n, 1, 1, 3])
        observations = observations * np.repeat(np.repeat(colour, 64, axis=1), 64, axis=2)
    elif variant == "noisy":
        observations = np.minimum(observations + rs.uniform(0, 1, [n, 64, 64, 3]), 1.)
    else:
        for i in range(n):
            x_crop = rs.randint(0, scream.shape[0] - 64)
            y_crop = rs.randint(0, scream.shape[1] - 64)
            background = (scream[x_crop:x_crop + 64, y_crop:y_crop + 64] + rs.uniform(0, 1, size=3)) / 2.
            mask = (observations[i] == 1)
            background[mask] = 1 - background[mask]
            observations[i] = background
    return factors, observations.astype(np.float32).transpose(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------- the pixels


def colour_checks(images: torch.Tensor, sprites: torch.Tensor) -> None:
    """Each image: black outside the sprite, one colour over it, each channel in [0.5, 1]."""
    assert images.shape == (len(sprites), 3, 64, 64) and images.dtype == torch.float32
    on = sprites[:, 0].bool()
    for image, mask in zip(images, on, strict=True):
        assert (image[:, ~mask] == 0).all()
        pixels = image[:, mask]  # (3, sprite pixels)
        assert (pixels == pixels[:, :1]).all()  # constant over the sprite
        assert ((pixels >= 0.5) & (pixels <= 1)).all()
    colours = images.amax(dim=(2, 3))
    assert len(torch.unique(colours, dim=0)) == len(images)  # one colour per observation, not per batch


def scream_checks(images: torch.Tensor, sprites: torch.Tensor) -> None:
    """Each image: a patch mixed with a colour, (patch + colour) / 2 in [0, 1], inverted on the sprite."""
    assert images.shape == (len(sprites), 3, 64, 64) and images.dtype == torch.float32
    assert ((images >= 0) & (images <= 1)).all()
    binary = sprites.bool().expand(-1, 3, -1, -1)
    background = images[~binary]
    assert background.std() > 0.05 and len(torch.unique(images.mean(dim=(1, 2, 3)))) == len(images)
    # The picture is smooth: beside the sprite's edge, background and sprite pixels add up to about 1.
    for image, mask in zip(images, binary, strict=True):
        rows, cols = torch.nonzero(mask[0], as_tuple=True)
        top, left = rows.min().item(), cols.min().item()
        if top > 0:
            assert torch.allclose(image[:, top, left] + image[:, top - 1, left], torch.ones(3), atol=0.06)


def noise_checks(images: torch.Tensor, sprites: torch.Tensor) -> None:
    """Each pixel between the binary image and 1: 1 on the sprite, uniform noise in [0, 1) elsewhere."""
    assert images.shape == (len(sprites), 3, 64, 64) and images.dtype == torch.float32
    binary = sprites.float().expand(-1, 3, -1, -1)
    assert (images >= binary).all() and (images <= 1).all()
    assert (images[binary == 1] == 1).all()
    background = images[binary == 0]
    assert (background < 1).all() and abs(background.mean().item() - 0.5) < 0.01 and background.std() > 0.28
    assert not torch.equal(images[0, 0], images[0, 1])  # per channel too


@pytest.mark.parametrize("source", ["library", "training", "fixed"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_source_of_draws_gives_the_variants_pixels(variant, source, tmp_path):
    base = TinySprites()
    data = variant_of(base, variant, tmp_path)
    indices = torch.arange(0, 60, 2)
    if source == "library":
        images = torch.cat(list(data.observe_chunks(indices.numpy(), np.random.RandomState(0), chunk=7)))
    elif source == "training":
        images = data.training_batch(indices, seed=1, step=3)
    else:
        images = data.get(indices)
    {"color": colour_checks, "noisy": noise_checks, "scream": scream_checks}[variant](images, base.get(indices))


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_replayed_draws_are_disentanglement_libs_pixel_for_pixel(variant, tmp_path):
    """Two `sample` calls (factors, then observations, from one RandomState), replayed in chunks of 16 that
    do not divide the call: the same images bit for bit and the same random state afterwards."""
    base = TinySprites()
    data = variant_of(base, variant, tmp_path)
    scream = library_scream(tmp_path / SCREAM_FILE) if variant == "scream" else None
    ours, theirs = np.random.RandomState(7), np.random.RandomState(7)
    for n in (37, 5):
        factors = data.sample_factors(n, ours)
        images = torch.cat(list(data.observe_chunks(data.indices_for_factors(factors).numpy(), ours, chunk=16)))
        expected_factors, expected = library_sample(base, variant, n, theirs, scream)
        assert np.array_equal(factors, expected_factors)
        assert torch.equal(images, torch.from_numpy(np.ascontiguousarray(expected)))
    state, expected_state = ours.get_state(), theirs.get_state()
    assert np.array_equal(state[1], expected_state[1]) and state[2:] == expected_state[2:]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_scores_encode_the_librarys_images_in_its_order(variant, tmp_path):
    """Through the evaluation's ground truth (observe, as metrics.batched_factors calls it): the labels are
    the factors and each code is the code of the image the library draws at that place."""
    base, encoder = TinySprites(), LinearVAE()
    data = variant_of(base, variant, tmp_path)
    scream = library_scream(tmp_path / SCREAM_FILE) if variant == "scream" else None
    codes = ObservedCodes(encoder, CPU, batch_size=8)
    truth = ObservedFactors(data, codes)
    rows = metrics.batched_factors(truth, np.random.RandomState(3), 40)  # 16 + 16 + 8 points
    got = codes(truth.images_for_factors(rows))
    rs, factors, images = np.random.RandomState(3), [], []
    for n in (16, 16, 8):
        f, x = library_sample(base, variant, n, rs, scream)
        factors.append(f)
        images.append(x)
    with torch.no_grad():
        want = encoder.encode(torch.from_numpy(np.concatenate(images)))[0].numpy()
    assert np.array_equal(metrics.labels(truth, rows), np.concatenate(factors))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert codes.encoded == 40 and codes.logvar is None  # the scores keep codes only


# ----------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_draws_are_a_function_of_seed_and_step_alone(variant, tmp_path):
    data = variant_of(TinySprites(), variant, tmp_path)
    indices = torch.arange(16)
    first = data.training_batch(indices, seed=1, step=5)
    assert torch.equal(first, data.training_batch(indices, seed=1, step=5))
    assert not torch.equal(first, data.training_batch(indices, seed=1, step=6))
    assert not torch.equal(first, data.training_batch(indices, seed=2, step=5))
    assert not torch.equal(first, data.get(indices))  # pictures keep their own fixed draws
    assert torch.equal(data.get(indices), data.get(indices))
    # batches() uses them, a --subset too, and starting at step 3 gives step 3's batch.
    order = BatchOrder(len(data), 8, seed=4)
    stream = batches(data, order, 3, CPU)
    assert torch.equal(next(stream), data.training_batch(order.indices(3), 4, 3))
    subset = Subset(data, 20, seed=4)
    sub_order = BatchOrder(len(subset), 8, seed=4)
    assert torch.equal(next(batches(subset, sub_order, 2, CPU)),
                       data.training_batch(subset.indices[sub_order.indices(2)], 4, 2))


def test_the_table_offers_the_variants_on_the_dsprites_file(tiny_dsprites):
    with pytest.raises(DataError, match="scream.jpg.*The_Scream.jpg"):  # the picture is missing
        load_dataset(DATASETS["dsprites_scream"], tiny_dsprites)
    write_scream(tiny_dsprites)
    for variant in VARIANTS:
        spec = DATASETS[f"dsprites_{variant}"]
        assert spec.relpath == DSPRITES_FILE and spec.nc == 3 and spec.kind == "dsprites"
        data = load_dataset(spec, tiny_dsprites)
        assert isinstance(data, DSpritesVariant) and data.variant == variant and data.nc == 3 and len(data) == 256
        assert torch.equal(data.base.packed, load_dsprites(tiny_dsprites / DSPRITES_FILE).packed)  # still bit-packed


def test_the_scream_is_shrunk_as_the_library_shrinks_it_and_must_fit_a_patch(tmp_path):
    path = write_scream(tmp_path, size=(1500, 1200))  # large enough for Pillow to decode the JPEG at 1/2
    picture = load_scream(path)
    assert picture.shape[0] == 274 and picture.shape[1] in (342, 343) and picture.dtype == np.float64
    assert np.array_equal(picture, library_scream(path))
    write_scream(tmp_path, size=(200, 64))
    with pytest.raises(DataError, match="at least 65 × 65"):
        load_scream(path)


STATE_KEYS = ("iter", "model_states", "optim_states", "rng", "gather", "last_record")


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_stopped_run_resumes_exactly_and_then_scores(variant, tmp_path, tiny_dsprites, one_thread):
    """Stopped at 5 and resumed to 12: the checkpoint and the records equal an uninterrupted run's bit for
    bit (every batch's colours, noise or patches are drawn again from (seed, step)). Then --train False
    scores it."""
    write_scream(tiny_dsprites)
    common = ("--dataset", f"dsprites_{variant}", "--model", "B", "--objective", "B", "--C_stop_iter", "5",
              "--batch_size", "8", "--gather_step", "5", "--save_output", "False", "--snapshot_step", "1000000")
    whole = run_args(tmp_path / "whole", tiny_dsprites, *common, "--viz_name", "v")
    split = run_args(tmp_path / "split", tiny_dsprites, *common, "--viz_name", "v")
    assert main([*whole, "--max_iter", "12"]) == 0
    assert main([*split, "--max_iter", "5"]) == 0
    assert main([*split, "--max_iter", "12"]) == 0
    got, want = (load_checkpoint(tmp_path / part / "checkpoints" / "v" / "last") for part in ("split", "whole"))
    for key in STATE_KEYS:
        assert_equal(got.get(key), want.get(key), key)
    assert got["config"]["nc"] == 3 and got["config"]["dataset"] == f"dsprites_{variant}"
    records = [{r["iter"]: r for r in map(json.loads, (tmp_path / part / "outputs" / "v" / "metrics.jsonl")
                                           .read_text().splitlines()) if r["iter"] % 5 == 0}
               for part in ("split", "whole")]
    assert records[0] == records[1] and set(records[0]) == {5, 10}

    assert main([*split, "--max_iter", "12", "--train", "False", "--eval_metrics", "True",
                 "--eval_scale", "0.01", "--save_output", "True"]) == 0
    folder = tmp_path / "split" / "outputs" / "v" / "from_checkpoint"
    result = json.loads((folder / "eval_12_scale0.01.json").read_text())
    assert len(result["latents"]["per_latent"]) == 10  # the tiny file has no factor grid: the report only
    assert "observations" in result["provenance"]["protocol"]
    assert (folder / "12" / "reconstruction.png").exists()  # pictures of 3-channel images


# ----------------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_score_and_the_report_on_each_variant(variant, tmp_path):
    data = variant_of(TinySprites(), variant, tmp_path / "data")
    scale = 0.005
    result = evaluate(LinearVAE(), data, CPU, 7, tmp_path, seed=3, scale=scale, dci_estimator="gbt",
                      progress=False)
    assert set(result["summary"]) == SUMMARY_KEYS
    assert all(np.isfinite(v) for v in result["summary"].values())
    report = result["latents"]
    assert report["has_posterior"] and all(row["kl"] is not None for row in report["per_latent"])
    assert any(row["best_factor"] in TinySprites.factor_names for row in report["per_latent"])
    protocol = result["provenance"]["protocol"]
    # Every drawn image is encoded, none looked up: the scores', the latent report's (all 60) and UDR's.
    assert protocol["images_encoded"] == metrics.images_drawn(scale) + 60 + udr.NUM_POINTS
    assert variant in protocol["observations"] and result["provenance"]["encoder"]["path"] == "encode()"
    for name in ("eval_7_scale0.005.json", "eval_7_scale0.005.txt", "eval_7_scale0.005_dci_importance.png",
                 "eval_7_scale0.005_mutual_information.png"):
        assert (tmp_path / name).stat().st_size > 0
    sample = np.load(tmp_path / "eval_7_scale0.005_udr_sample.npz")
    assert sample["codes"].shape == (udr.NUM_POINTS, 4) and sample["kl"].shape == (4,)
    # UDR's images are drawn as the library draws them: its factors, from RandomState(seed).
    factors = udr.sample_factor_batches(ObservedFactors(data, ObservedCodes(LinearVAE(), CPU)),
                                        np.random.RandomState(3))[:, :3]
    assert np.array_equal(sample["indices"], data.indices_for_factors(factors).numpy())
    # The same evaluation again gives the same numbers.
    again = evaluate(LinearVAE(), data, CPU, 7, tmp_path / "again", seed=3, scale=scale, progress=False)
    assert again["summary"] == result["summary"]


def test_the_memory_check_counts_every_image_the_protocol_draws_on_a_variant(tmp_path, tiny_dsprites, monkeypatch,
                                                                              capsys):
    import main as main_module

    seen = []
    real = main_module.check_sizes
    monkeypatch.setattr(main_module, "check_sizes", lambda args, images, *rest: seen.append(images) or
                        real(args, images, *rest))
    argv = run_args(tmp_path, tiny_dsprites, "--dataset", "dsprites_color", "--viz_name", "sizes", "--max_iter", "0",
                    "--eval_metrics", "True", "--eval_scale", "0.5")
    assert main(argv) == 0
    assert seen == [metrics.images_drawn(0.5)]  # not the 256 images of the file: each draw is a new image
