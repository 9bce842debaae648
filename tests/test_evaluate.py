"""Evaluation from the command line: scores, the latent report, and data without factors."""

import json

import numpy as np
import torch
from conftest import run_args
from PIL import Image

import metrics
from dataset import DSPRITES_FILE, load_dsprites
from evaluate import CodeCache, IndexedFactors
from main import main
from model import BetaVAE_B


def test_code_cache_equals_direct_encoding_and_encodes_each_image_once(full_dsprites):
    data = load_dsprites(full_dsprites / DSPRITES_FILE)
    model = BetaVAE_B(z_dim=10, nc=1).eval()
    cache = CodeCache(model, data, torch.device("cpu"))
    factors = IndexedFactors(data)
    indices = factors.images_for_factors(data.sample_factors(300, np.random.RandomState(0)))
    codes = cache(torch.cat([indices, indices[:100]]))  # repeats are looked up, not encoded again
    assert cache.known.sum().item() == len(torch.unique(indices))
    with torch.no_grad():
        direct = model.encode(data.images_for_factors(data.latents_classes[indices.numpy(), 1:]))[0].numpy()
    assert np.allclose(codes[:300], direct, atol=1e-5)
    assert np.array_equal(codes[300:], codes[:100])
    assert np.array_equal(cache(indices[:50]), codes[:50])  # a call with nothing new to encode


def test_fill_encodes_every_image_as_the_dense_encoder_does(full_dsprites):
    data = load_dsprites(full_dsprites / DSPRITES_FILE)
    torch.manual_seed(0)
    model = BetaVAE_B(z_dim=10, nc=1).eval()
    for p in model.parameters():  # larger weights and biases than at initialisation: blank maps matter
        p.data.normal_(0, 0.1)
    cache = CodeCache(model, data, torch.device("cpu"))
    cache._encode(torch.arange(0, len(data), 997))  # a spread of shapes, scales and positions, in order
    sample = torch.arange(0, len(data), 997)
    with torch.no_grad():
        dense = model.encode(data.get(sample).float())[0]
    assert cache.known[sample].all() and cache.known.sum() == len(sample)
    torch.testing.assert_close(cache.codes[sample], dense, rtol=0, atol=2e-5)


def test_images_drawn_counts_what_the_protocol_draws():
    class Counting:
        factor_names, factor_sizes = ("a", "b", "c"), (3, 4, 5)
        drawn = 0

        def sample_factors(self, n, rng):
            return np.stack([rng.randint(s, size=n) for s in self.factor_sizes], axis=1)

        def images_for_factors(self, factors):
            Counting.drawn += len(factors)
            return torch.as_tensor(factors, dtype=torch.float32)

    metrics.evaluate_all(Counting(), lambda images: images.numpy() + 0.01 * np.sin(7 * images.numpy().sum(1,
                         keepdims=True)), seed=0, scale=0.004, dci_estimator="hist")
    assert Counting.drawn == metrics.images_drawn(0.004)
    assert metrics.images_drawn(1.0) > 3 * 737_280  # so a full evaluation encodes all of dSprites first


def test_dci_estimator_flag_offers_every_estimator():
    from main import DCI_ESTIMATORS, parse_args
    assert DCI_ESTIMATORS == metrics.DCI_ESTIMATORS
    assert parse_args([]).dci_estimator == "gbt"
    assert parse_args(["--dci_estimator", "hist"]).dci_estimator == "hist"


def test_eval_from_a_checkpoint_writes_all_scores_and_the_latent_report(tmp_path, full_dsprites, capsys):
    argv = run_args(tmp_path, full_dsprites, "--viz_name", "ev", "--model", "B", "--objective", "B",
                    "--max_iter", "2")
    assert main(argv) == 0
    assert main(argv + ["--train", "False", "--eval_metrics", "True", "--eval_scale", "0.005"]) == 0
    result = json.loads((tmp_path / "outputs" / "ev" / "eval_2.json").read_text())
    assert set(result["summary"]) == {"beta_vae", "factor_vae", "mig", "dci_disentanglement",
                                      "dci_completeness", "dci_informativeness", "sap"}
    assert all(0 <= v <= 1 for v in result["summary"].values())
    latents = result["latents"]
    assert len(latents["per_latent"]) == 10 and sorted(latents["order"]) == list(range(10))
    kl = [latents["per_latent"][i]["kl"] for i in latents["order"]]
    assert kl == sorted(kl, reverse=True)
    table = (tmp_path / "outputs" / "ev" / "eval_2.txt").read_text()
    assert "BetaVAE" in table and "MIG" in table and "best factor" in table


def test_data_without_factors_gets_the_report_and_a_note(tmp_path):
    folder = tmp_path / "data" / "CelebA"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for i in range(40):
        Image.fromarray(rng.randint(0, 255, (70, 60, 3), dtype=np.uint8)).save(folder / f"{i:03d}.jpg")
    argv = run_args(tmp_path, tmp_path / "data", "--dataset", "celeba", "--viz_name", "faces", "--max_iter", "4",
                    "--eval_step", "2", "--num_workers", "0", "--batch_size", "8")
    assert main(argv) == 0
    result = json.loads((tmp_path / "outputs" / "faces" / "eval_4.json").read_text())
    assert "ground-truth factors" in result["note"] and "scores" not in result
    assert len(result["latents"]["per_latent"]) == 10
    records = [json.loads(line) for line in (tmp_path / "outputs" / "faces" / "metrics.jsonl").open()]
    assert [r["iter"] for r in records if "eval" in r] == [2, 4]
