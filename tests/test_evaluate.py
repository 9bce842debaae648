"""Evaluation: the code cache, encoding only what the protocol draws, any encoder (with or without a
posterior), provenance, file names by scale, the z0.. numbering, heatmaps, atomic files, progress and the
command line."""

import hashlib
import json

import numpy as np
import pytest
import sklearn
import torch
from conftest import TinySprites, run_args
from PIL import Image
from torch import nn

from dataset import DSPRITES_FILE, ImageFolder, load_dsprites
from evaluation import evaluate as evaluation
from evaluation import metrics, udr
from evaluation.evaluate import CodeCache, IndexedFactors, evaluate
from loaders import dsprites_gen
from main import main
from model import BetaVAE_B, build_model

# The summary of every evaluation on data with factors (metrics.summary_scores).
SUMMARY_KEYS = {"beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness", "dci_informativeness",
                "sap", "irs", "modularity", "explicitness", "gaussian_total_correlation",
                "gaussian_wasserstein_correlation", "mutual_info_score"}
UNSUPERVISED_KEYS = {"gaussian_total_correlation", "gaussian_wasserstein_correlation", "mutual_info_score"}


class Projection(nn.Module):
    """A PCA-like encoder: a fixed linear map of the pixels, no posterior (logvar None)."""

    def __init__(self, z_dim=3):
        super().__init__()
        self.z_dim = z_dim
        self.weight = nn.Parameter(torch.randn(64 * 64, z_dim, generator=torch.Generator().manual_seed(0)) / 64)
        self.weight.data[:, -1] = 0  # a constant code: inactive

    images = 0  # encoded so far, by every copy (evaluation encodes with a copy of the encoder)

    def encode(self, x):
        Projection.images += len(x)
        return x.flatten(1) @ self.weight, None


def trained_like(seed=0):
    torch.manual_seed(seed)
    model = build_model("B", 10, 1).eval()
    for p in model.parameters():  # larger weights and biases than at initialisation: blank maps matter
        p.data.normal_(0, 0.1)
    return model


def run(tmp_path, encoder=None, data=None, scale=0.01, **kwargs):
    return evaluate(encoder if encoder is not None else trained_like(), data or TinySprites(), torch.device("cpu"),
                    7, tmp_path, seed=3, scale=scale, **kwargs)


@pytest.fixture(scope="module")
def dsprites(full_dsprites):
    """All of generated dSprites, loaded once for this file's tests (a load packs 737,280 images: seconds)."""
    return load_dsprites(full_dsprites / DSPRITES_FILE)


# ----------------------------------------------------------------------------------------- the code cache


def test_code_cache_equals_direct_encoding_and_encodes_each_image_once(dsprites):
    data = dsprites
    model = BetaVAE_B(z_dim=10, nc=1).eval()
    cache = CodeCache(model, data, torch.device("cpu"))
    factors = IndexedFactors(data)
    indices = factors.images_for_factors(data.sample_factors(300, np.random.RandomState(0)))
    codes = cache(torch.cat([indices, indices[:100]]))  # repeats are looked up, not encoded again
    assert cache.known.sum().item() == len(torch.unique(indices)) == cache.encoded
    with torch.no_grad():
        direct, logvar = model.encode(data.images_for_factors(data.latents_classes[indices.numpy(), 1:]))
    assert np.allclose(codes[:300], direct, atol=1e-5)
    assert torch.allclose(cache.logvar[indices], logvar, atol=1e-5)
    assert np.array_equal(codes[300:], codes[:100])
    assert np.array_equal(cache(indices[:50]), codes[:50])  # a call with nothing new to encode


def test_cache_encodes_every_image_as_the_dense_encoder_does(dsprites):
    data = dsprites
    model = trained_like()
    cache = CodeCache(model, data, torch.device("cpu"))
    sample = torch.arange(0, len(data), 997)  # a spread of shapes, scales and positions, in order
    cache.encode(sample)
    with torch.no_grad():
        dense = model.encode(data.get(sample).float())[0]
    assert cache.sparse is not None and cache.known[sample].all() and cache.known.sum() == len(sample)
    torch.testing.assert_close(cache.codes[sample], dense, rtol=0, atol=2e-5)


def test_batches_run_in_threads_of_one_torch_thread_and_come_back_in_order():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = list(evaluation.map_batches(lambda b: (b, torch.get_num_threads()), list(range(6)), torch.device("cpu")))
        assert seen == [(b, 1) for b in range(6)] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_looking_up_encoded_images_reads_no_data():
    data = TinySprites()
    cache = CodeCache(trained_like(), data, torch.device("cpu"), batch_size=16)
    cache.encode(torch.arange(len(data)))
    assert data.got == len(data) == cache.encoded
    codes = cache(torch.tensor([3, 3, 59, 0]))
    assert data.got == len(data) == cache.encoded and codes.shape == (4, 10)
    assert np.array_equal(codes[0], codes[1])


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


def test_a_small_scale_encodes_only_the_images_the_protocol_draws(tmp_path, dsprites):
    """--eval_scale 0.002 on all of dSprites: the distinct images of the protocol's draws, the latent
    report and UDR's sample are encoded, each once, and nothing else (about 7,800 images, not 737,280)."""
    data = dsprites
    encoder = Projection()
    Projection.images = 0
    result = run(tmp_path, encoder, data, scale=0.002)
    ground_truth = IndexedFactors(data)
    drawn = torch.cat([ground_truth.images_for_factors(f) for f in metrics.protocol_draws(ground_truth, 3, 0.002)])
    expected = torch.unique(torch.cat([drawn, evaluation.report_indices(len(data), 3, 0.002),
                                       evaluation.udr_indices(data, 3)]))
    assert Projection.images == len(expected) == result["provenance"]["protocol"]["images_encoded"]
    report = len(evaluation.report_indices(len(data), 3, 0.002))
    assert len(expected) <= metrics.images_drawn(0.002) + report + udr.NUM_POINTS < len(data) / 50


# ----------------------------------------------------------------------------------------- any encoder


def test_an_encoder_without_a_posterior_gets_scores_and_a_report_without_kl(tmp_path):
    encoder = Projection(z_dim=3)
    result = run(tmp_path, encoder)
    assert set(result["summary"]) == SUMMARY_KEYS
    report = result["latents"]
    assert not report["has_posterior"] and "standard deviation" in report["active_rule"]
    assert all(row["kl"] is None and row["posterior_variance"] is None for row in report["per_latent"])
    variances = [row["code_variance"] for row in report["per_latent"]]
    assert report["order"] == sorted(range(3), key=lambda i: -variances[i])
    assert [row["active"] for row in report["per_latent"]] == [True, True, False]  # z2 is constant
    assert report["per_latent"][2]["best_factor"] is None and report["per_latent"][0]["best_factor"]
    assert result["provenance"]["encoder"] == {"class": "Projection", "z_dim": 3, "has_logvar": False,
                                               "path": "encode()"}
    text = (tmp_path / "eval_7_scale0.01.txt").read_text()
    assert "standard deviation" in text and "z2" in text


def test_a_vae_report_has_kl_posterior_and_code_variance(tmp_path):
    result = run(tmp_path)
    rows = result["latents"]["per_latent"]
    assert result["latents"]["has_posterior"] and all(row["kl"] is not None for row in rows)
    kl = [rows[i]["kl"] for i in result["latents"]["order"]]
    assert kl == sorted(kl, reverse=True)
    assert all(row["posterior_variance"] > 0 and row["code_variance"] >= 0 for row in rows)


# ----------------------------------------------------------------------------------------- files


def test_provenance_says_how_the_numbers_were_produced(tmp_path):
    npz = tmp_path / "data" / "dsprites.npz"
    dsprites_gen.generate_dsprites(npz, progress=False, _combos=[(0, 5, 0)])
    given = {"checkpoint": {"path": "checkpoints/run/last", "iteration": 7}, "precision": "fp32",
             "precision_reason": "asked for with --precision fp32", "seed": 3, "method": "B", "model": "B",
             "dataset": {"name": "dsprites", "path": str(npz)}, "config": {"lr": 1e-4, "z_dim": 10}}
    result = run(tmp_path / "out", provenance=given)
    saved = json.loads((tmp_path / "out" / "eval_7_scale0.01.json").read_text())
    assert saved["provenance"] == json.loads(json.dumps(evaluation._plain(result["provenance"])))
    prov = saved["provenance"]
    protocol = prov["protocol"]
    assert protocol["scale"] == 0.01 and protocol["dci_estimator"] == "gbt" and protocol["seed"] == 3
    assert protocol["sample_counts"] == json.loads(json.dumps(
        {**metrics.protocol(0.01), "dci": {**metrics.protocol(0.01)["dci"], "estimator": "gbt"}}))
    assert prov["precision"]["used"] == "fp32" and prov["precision"]["reason"] == given["precision_reason"]
    assert prov["seed"] == 3 and prov["checkpoint"] == given["checkpoint"]
    assert (prov["method"], prov["model"], prov["config"]) == ("B", "B", given["config"])
    assert prov["dataset"]["name"] == "dsprites" and prov["dataset"]["path"] == str(npz)
    assert prov["dataset"]["origin"] == "generated by dsprites_gen.py"
    assert prov["dataset"]["fingerprint"]["sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    assert prov["software"]["torch"] == torch.__version__
    assert prov["software"]["numpy"] == np.__version__ and prov["software"]["scikit-learn"] == sklearn.__version__
    text = (tmp_path / "out" / "eval_7_scale0.01.txt").read_text()
    for fact in ("checkpoints/run/last", "iteration 7", "precision: fp32", "asked for", "generated by dsprites_gen.py",
                 hashlib.sha256(npz.read_bytes()).hexdigest(), "estimator gbt", "scikit-learn", "seed: 3"):
        assert fact in text, fact


def test_bf16_is_recorded_as_the_precision_used(tmp_path):
    result = run(tmp_path, autocast_dtype=torch.bfloat16)
    assert result["provenance"]["precision"]["used"] == "bf16"


def test_a_scale_other_than_1_gets_its_own_files_marked_not_comparable(tmp_path):
    result = run(tmp_path, scale=0.01)
    assert not result["provenance"]["protocol"]["comparable_with_published"]
    assert "not comparable with published numbers" in result["provenance"]["protocol"]["note"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["eval_7_scale0.01.json", "eval_7_scale0.01.txt", "eval_7_scale0.01_dci_importance.png",
                     "eval_7_scale0.01_mutual_information.png", "eval_7_scale0.01_udr_sample.npz"]
    assert "NOT comparable with published numbers" in (tmp_path / "eval_7_scale0.01.txt").read_text()
    assert evaluation.result_stem(7, 1.0) == "eval_7" and evaluation.result_stem(7, 0.1) == "eval_7_scale0.1"
    assert evaluation.result_stem(12, 2.0) == "eval_12_scale2"


def test_latents_are_numbered_from_z0_everywhere(tmp_path):
    result = run(tmp_path)
    names = [f"z{i}" for i in range(10)]
    assert [row["name"] for row in result["latents"]["per_latent"]] == names
    assert [row["index"] for row in result["latents"]["per_latent"]] == list(range(10))
    assert all(m["rows"] == names for m in result["matrices"].values())
    table = (tmp_path / "eval_7_scale0.01.txt").read_text()
    assert " z0 " in table and " z9 " in table and "z10" not in table


def test_heatmaps_of_dci_importance_and_mutual_information(tmp_path):
    result = run(tmp_path)
    matrices = result["matrices"]
    assert set(matrices) == {"dci_importance", "mutual_information"}
    for name, matrix in matrices.items():
        assert matrix["columns"] == list(TinySprites.factor_names)
        assert np.asarray(matrix["matrix"]).shape == (10, 3)
        with Image.open(tmp_path / f"eval_7_scale0.01_{name}.png") as image:
            assert image.format == "PNG" and image.width > 200
    assert matrices["dci_importance"]["matrix"] == result["scores"]["dci"]["importance"]
    assert matrices["mutual_information"]["matrix"] == result["scores"]["mig"]["mutual_information"]


def test_every_file_is_written_atomically(tmp_path, monkeypatch):
    """Each file goes through utils.atomic_write; when the final rename fails (a full disk, a kill), the
    previous files stay as they were and no temporary file is left."""
    written = []
    real = evaluation.atomic_write

    def recording(path, write):
        written.append(path.name)
        real(path, write)

    monkeypatch.setattr(evaluation, "atomic_write", recording)
    run(tmp_path)
    assert sorted(written) == sorted(p.name for p in tmp_path.iterdir())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_replace(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("utils.os.replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        run(tmp_path, trained_like(seed=1))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_progress_bars_for_every_stage_and_the_table_at_the_end(tmp_path, capsys):
    run(tmp_path, progress=True)
    out, err = capsys.readouterr()
    for stage in ("encoding", "beta_vae", "factor_vae", "mig", "dci", "sap", "latent report"):
        assert stage in err, stage
    assert "BetaVAE" in out and "DCI" in out and "z0" in out


def test_data_without_factors_gets_the_report_and_a_note(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for i in range(12):
        Image.fromarray(rng.randint(0, 255, (70, 60, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    model = build_model("H", 4, 3)
    result = run(tmp_path / "out", model, ImageFolder(folder), scale=1.0,
                 provenance={"dataset": {"name": "celeba", "path": str(folder)}})
    assert "ground-truth factors" in result["note"] and "scores" not in result and result["matrices"] == {}
    assert len(result["latents"]["per_latent"]) == 4
    assert result["provenance"]["dataset"]["origin"] == "image folder"
    assert "12 image files" in result["provenance"]["dataset"]["fingerprint"]["of"]
    # UDR needs no factors: the sample of 1,000 images (12 distinct here) is saved for a study's report.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["eval_7.json", "eval_7.txt",
                                                                     "eval_7_udr_sample.npz"]
    with np.load(tmp_path / "out" / "eval_7_udr_sample.npz") as sample:
        assert sample["codes"].shape == (udr.NUM_POINTS, 4) and sample["kl"].shape == (4,)
        assert set(sample["indices"].tolist()) <= set(range(12))


# ----------------------------------------------------------------------------------------- command line


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
    result = json.loads((tmp_path / "outputs" / "ev" / "from_checkpoint" / "eval_2_scale0.005.json").read_text())
    assert set(result["summary"]) == SUMMARY_KEYS
    assert all(0 <= result["summary"][k] <= 1 for k in SUMMARY_KEYS - UNSUPERVISED_KEYS)
    latents = result["latents"]
    assert len(latents["per_latent"]) == 10 and sorted(latents["order"]) == list(range(10))
    kl = [latents["per_latent"][i]["kl"] for i in latents["order"]]
    assert kl == sorted(kl, reverse=True)
    assert result["provenance"]["checkpoint"]["iteration"] == 2
    table = (tmp_path / "outputs" / "ev" / "from_checkpoint" / "eval_2_scale0.005.txt").read_text()
    assert "BetaVAE" in table and "MIG" in table and "best factor" in table


def test_eval_steps_on_data_without_factors_log_the_report(tmp_path):
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
