"""The methods beside β-VAE end to end: FactorVAE, β-TCVAE, DIP-VAE-I/II, InfoGAN, and the PCA and ICA baselines.

Every run here is a few iterations on the 256-image dSprites-format file of conftest.py. The runs compared bit
for bit use one CPU thread: another thread count changes the order of float sums, hence the last bits.
"""

import json
import math
import shlex

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_equal, run_args

from main import main, parse_args
from methods import METHODS, Compute, build_method, flag_errors, per_method_defaults
from model import BetaVAE_DLIB
from storage.checkpoint import load_checkpoint

TRAINED = ["factorvae", "btcvae", "dipvae_i", "dipvae_ii", "infogan"]
TWO_NETWORKS = ({"net", "discriminator"}, {"optim", "optim_discriminator"})
CHECKPOINT_KEYS = {"factorvae": TWO_NETWORKS, "btcvae": ({"net"}, {"optim"}), "dipvae_i": ({"net"}, {"optim"}),
                   "dipvae_ii": ({"net"}, {"optim"}), "infogan": TWO_NETWORKS}
EXTRA_STATS = {"factorvae": ("tc", "d_loss", "d_accuracy"), "btcvae": ("tc",),
               "dipvae_i": ("dip_off_diagonal", "dip_diagonal"), "dipvae_ii": ("dip_off_diagonal", "dip_diagonal"),
               "infogan": ("loss", "d_loss", "g_loss", "code_loss", "mi", "d_real", "d_fake")}
CPU = Compute(torch.device("cpu"))  # fp32, NCHW: the reference's numerics


def build(*flags: str, nc: int = 1):
    args = parse_args(["--cuda", "False", *flags])
    return build_method(args, nc, "bernoulli", CPU)


def records(root, name: str) -> list[dict]:
    return [json.loads(line) for line in (root / "outputs" / name / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- every trained method


@pytest.mark.parametrize("objective", TRAINED)
def test_three_iterations_write_a_checkpoint_their_stats_and_pictures(tmp_path, tiny_dsprites, objective):
    argv = run_args(tmp_path, tiny_dsprites, "--objective", objective, "--max_iter", "3", "--gather_step", "1",
                    "--display_step", "1", "--save_step", "1", "--batch_size", "8", "--viz_name", "run")
    assert main(argv) == 0
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "run" / "last")
    networks, optimizers = CHECKPOINT_KEYS[objective]
    assert checkpoint["iter"] == 3 and checkpoint["config"]["objective"] == objective
    assert set(checkpoint["model_states"]) == networks and set(checkpoint["optim_states"]) == optimizers
    for name in optimizers:  # every optimiser took its three steps
        assert all(state["step"].item() == 3 for state in checkpoint["optim_states"][name]["state"].values())
    logged = records(tmp_path, "run")
    assert [r["iter"] for r in logged] == [1, 2, 3]
    assert all(math.isfinite(r[stat]) for r in logged for stat in EXTRA_STATS[objective])
    for step in (1, 2, 3):  # pictures at every display step, not only at the end
        folder = tmp_path / "outputs" / "run" / str(step)
        for picture in ("reconstruction.png", "traverse_random_img.png", "traverse_random_img.gif"):
            assert (folder / picture).stat().st_size > 0


@pytest.mark.parametrize("objective", TRAINED)
def test_two_plus_two_iterations_equal_four_bit_for_bit(tmp_path, tiny_dsprites, one_thread, objective):
    common = run_args(tmp_path, tiny_dsprites, "--objective", objective, "--batch_size", "8", "--gather_step", "1",
                      "--display_step", "1000", "--save_step", "1000", "--save_output", "False")
    assert main(common + ["--viz_name", "straight", "--max_iter", "4"]) == 0
    assert main(common + ["--viz_name", "halves", "--max_iter", "2"]) == 0
    assert main(common + ["--viz_name", "halves", "--max_iter", "4"]) == 0
    straight, halves = (load_checkpoint(tmp_path / "checkpoints" / run / "last") for run in ("straight", "halves"))
    for key in ("iter", "model_states", "optim_states", "rng", "gather"):
        assert_equal(halves[key], straight[key], key)
    assert records(tmp_path, "halves")[-2:] == records(tmp_path, "straight")[-2:]


# --------------------------------------------------------------------------- defaults


def test_per_method_defaults_and_the_derived_lambda_d():
    assert parse_args(["--objective", "factorvae"]).gamma == 10.0
    assert parse_args(["--objective", "B"]).gamma == 1000.0  # the reference's, unchanged
    assert parse_args(["--objective", "btcvae"]).beta == 10.0 and parse_args([]).beta == 4.0
    dip_i, dip_ii = parse_args(["--objective", "dipvae_i"]), parse_args(["--objective", "DIPVAE_II"])
    assert (dip_i.lambda_od, dip_i.lambda_d) == (10.0, 100.0) and (dip_ii.lambda_od, dip_ii.lambda_d) == (10.0, 10.0)
    assert parse_args(["--objective", "dipvae_i", "--lambda_od", "3"]).lambda_d == 30.0
    assert parse_args(["--objective", "dipvae_ii", "--lambda_od", "3"]).lambda_d == 3.0
    assert parse_args(["--objective", "dipvae_i", "--lambda_od", "3", "--lambda_d", "7"]).lambda_d == 7.0
    assert "dipvae_i 10·lambda_od" in per_method_defaults("lambda_d")
    factor = parse_args(["--objective", "factorvae"])
    assert (factor.lr_D, factor.beta1_D, factor.beta2_D) == (1e-4, 0.5, 0.9)
    gan = parse_args(["--objective", "infogan"])
    assert (gan.lr_D, gan.beta1_D, gan.lambda_mi, gan.noise_dim) == (2e-4, 0.5, 1.0, 0)


def test_each_method_has_its_architecture_and_a_source():
    assert {name: parse_args(["--objective", name]).model for name in METHODS} == {
        "H": "H", "B": "H", "factorvae": "DLIB", "btcvae": "DLIB", "dipvae_i": "DLIB", "dipvae_ii": "DLIB",
        "infogan": None, "pca": None, "ica": None}
    assert all(spec.source for spec in METHODS.values())
    with pytest.raises(SystemExit) as stop:  # a model InfoGAN would ignore is an argparse error
        parse_args(["--objective", "infogan", "--model", "H"])
    assert stop.value.code == 2
    assert not flag_errors(parse_args(["--objective", "btcvae", "--model", "B"]))


@pytest.mark.parametrize("flag,value", [("--beta1_D", "1"), ("--lr_D", "0"), ("--lambda_od", "-1"),
                                        ("--noise_dim", "-2")])
def test_bad_hyperparameters_are_refused_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(["--objective", "factorvae", flag, value])
    assert stop.value.code == 2 and flag in capsys.readouterr().err


def test_dlib_architecture_shapes_and_glorot_initialisation():
    model = BetaVAE_DLIB(z_dim=10, nc=1)
    h, shapes = torch.rand(2, 1, 64, 64), []
    for layer in model.encoder:
        h = layer(h)
        shapes.append(tuple(h.shape))
    assert [shapes[i] for i in (0, 2, 4, 6, 9, 11)] == [(2, 32, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8),
                                                          (2, 64, 4, 4), (2, 256), (2, 20)]
    last = model.encoder[11].weight
    limit = math.sqrt(6 / (256 + 10))  # each half is a 256 -> 10 layer
    assert last.abs().max() <= limit and last.abs().max() > 0.9 * limit
    assert all(m.bias.abs().sum() == 0 for m in model.modules() if hasattr(m, "bias") and m.bias is not None)


# --------------------------------------------------------------------------- FactorVAE's two updates


def test_factor_vae_updates_each_network_with_its_own_loss():
    """With γ = 0 the VAE takes exactly a plain VAE's step (the discriminator's loss never reaches it); the
    discriminator takes the same step whatever γ (the TC term never reaches it)."""
    x = (torch.rand(16, 1, 64, 64) > 0.8).float()
    methods = {}
    for name, flags in {"plain": ("--objective", "H", "--beta", "1", "--model", "DLIB"),
                        "gamma0": ("--objective", "factorvae", "--gamma", "0"),
                        "gamma50": ("--objective", "factorvae", "--gamma", "50")}.items():
        torch.manual_seed(0)
        methods[name] = build(*flags)
        torch.manual_seed(1)
        methods[name].train_step(x, 1)
    plain, gamma0, gamma50 = (methods[n].vae.state_dict() for n in ("plain", "gamma0", "gamma50"))
    assert all(torch.equal(plain[k], gamma0[k]) for k in plain)
    assert not all(torch.equal(plain[k], gamma50[k]) for k in plain)
    d0, d50 = (methods[n].discriminator.state_dict() for n in ("gamma0", "gamma50"))
    assert all(torch.equal(d0[k], d50[k]) for k in d0)
    torch.manual_seed(0)
    untrained = build("--objective", "factorvae").discriminator.state_dict()
    assert not all(torch.equal(untrained[k], d0[k]) for k in d0)  # it did take a step


def test_factor_vae_discriminator_is_six_layers_of_1000():
    layers = list(build("--objective", "factorvae", "--z_dim", "7").discriminator.net)
    linear = [m for m in layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(7, 1000)] + [(1000, 1000)] * 5 + [(1000, 2)]
    assert all(m.negative_slope == 0.2 for m in layers if isinstance(m, torch.nn.LeakyReLU))


# --------------------------------------------------------------------------- InfoGAN


@pytest.mark.parametrize("nc,noise", [(1, 0), (3, 5)])
def test_info_gan_shapes(nc, noise):
    torch.manual_seed(0)
    gan = build("--objective", "infogan", "--noise_dim", str(noise), "--z_dim", "6", nc=nc)
    gan.eval()
    x = torch.rand(4, nc, 64, 64)
    assert gan.discriminator.body(x * 2 - 1).shape == (4, 256, 2, 2)  # what the 2×2 heads read
    logits, codes = gan.discriminator(x * 2 - 1)
    assert logits.shape == (4,) and codes.shape == (4, 6)
    images = gan.generator(torch.rand(4, 6) * 2 - 1, torch.rand(4, noise) * 2 - 1)
    assert images.shape == (4, nc, 64, 64) and images.abs().max() <= 1
    assert gan.generator.net[0].in_channels == 6 + noise
    assert gan.generator.state_dict()["fixed_noise"].shape == (noise,)
    estimate, logvar = gan.encoder.encode(x)
    assert logvar is None and torch.equal(estimate, codes) and gan.encoder.z_dim == 6
    reconstruction = gan.reconstruct(x)
    assert reconstruction.shape == x.shape and reconstruction.min() >= 0 and reconstruction.max() <= 1
    assert torch.equal(reconstruction, gan.reconstruct(x))  # the noise is held fixed
    rows = gan.traverse(x[0], [5, 0])
    assert rows.shape == (2, 10, nc, 64, 64) and rows.min() >= 0 and rows.max() <= 1


def test_info_gan_optimisers_split_the_parameters():
    gan = build("--objective", "infogan")
    generator_side = {id(p) for group in gan.optimizers["optim"].param_groups for p in group["params"]}
    discriminator_side = {id(p) for g in gan.optimizers["optim_discriminator"].param_groups for p in g["params"]}
    q_head = {id(p) for p in gan.discriminator.q_head.parameters()}
    assert q_head <= generator_side and not generator_side & discriminator_side
    assert generator_side | discriminator_side == {id(p) for p in gan.parameters()}
    assert gan.optimizers["optim_discriminator"].param_groups[0]["lr"] == 2e-4


def test_a_changed_discriminator_rate_takes_effect_on_resume(tmp_path, tiny_dsprites):
    argv = run_args(tmp_path, tiny_dsprites, "--objective", "factorvae", "--viz_name", "rate", "--save_output",
                    "False")
    assert main(argv + ["--max_iter", "1"]) == 0
    assert main(argv + ["--max_iter", "2", "--lr_D", "3e-4"]) == 1  # a guarded change is refused ...
    assert main(argv + ["--max_iter", "2", "--lr_D", "3e-4", "--resume_with_changes", "True"]) == 0  # ... or taken
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "rate" / "last")
    assert checkpoint["optim_states"]["optim_discriminator"]["param_groups"][0]["lr"] == 3e-4


# --------------------------------------------------------------------------- PCA and ICA


class Images:
    """A dataset of given float images (N, 1, 64, 64): the interface the baselines read."""

    nc, scale = 1, 1.0

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]


def mixtures(patterns: torch.Tensor, sources: torch.Tensor) -> Images:
    """Images 0.5 + sources·patterns: (N, K) sources, (K, 4096) patterns."""
    return Images((0.5 + 0.05 * sources @ patterns).reshape(-1, 1, 64, 64))


def matched_correlations(codes: torch.Tensor, sources: torch.Tensor) -> list[float]:
    """For each source, |correlation| with the code matched to it (codes and sources paired one to one)."""
    k = sources.shape[1]
    corr = np.abs(np.corrcoef(codes.T.numpy(), sources.T.numpy())[:k, k:])  # (codes, sources)
    assert sorted(corr.argmax(axis=0)) == list(range(k)), f"codes are not one per source:\n{corr}"
    return corr.max(axis=0).tolist()


def blocks(*rows: tuple[int, int]) -> torch.Tensor:
    patterns = torch.zeros(len(rows), 64, 64)
    for k, (top, bottom) in enumerate(rows):
        patterns[k, top:bottom] = 1
    return patterns.reshape(len(rows), -1)


def fit(objective: str, data: Images):
    method = build("--objective", objective, "--z_dim", "3", "--seed", "0")
    method.fit(data)
    return method, method.encoder.encode(data.images)


def test_pca_recovers_orthogonal_sources_of_different_variance():
    generator = torch.Generator().manual_seed(0)
    sources = (torch.rand(2000, 3, generator=generator) - 0.5) * torch.tensor([6.0, 3.0, 1.0])
    data = mixtures(blocks((0, 10), (20, 30), (40, 50)), sources)
    method, (codes, logvar) = fit("pca", data)
    assert logvar is None and codes.shape == (2000, 3) and method.fitted
    assert min(matched_correlations(codes, sources)) > 0.999
    assert torch.allclose(codes.std(0), torch.ones(3), atol=0.01)  # whitened
    assert torch.allclose(method.reconstruct(data.images[:5]), data.images[:5], atol=1e-4)  # nothing else varies


def test_ica_recovers_independent_sources_that_pca_mixes():
    generator = torch.Generator().manual_seed(1)
    sources = (torch.rand(2000, 3, generator=generator) - 0.5) * math.sqrt(12)  # uniform, unit variance
    data = mixtures(blocks((0, 20), (10, 30), (40, 50)), sources)  # the first two patterns overlap
    _, (codes, _) = fit("ica", data)
    assert min(matched_correlations(codes, sources)) > 0.99
    _, (pca_codes, _) = fit("pca", data)
    pca_corr = np.abs(np.corrcoef(pca_codes.T.numpy(), sources.T.numpy())[:3, 3:])
    assert pca_corr[:, :2].max() < 0.95  # PCA's components mix the first two sources


def test_pca_fits_once_saves_the_components_and_says_so_when_run_again(tmp_path, tiny_dsprites, capsys):
    argv = run_args(tmp_path, tiny_dsprites, "--objective", "pca", "--viz_name", "pca", "--fit_images", "100")
    assert main(argv) == 0
    assert "on 100 of 256 images" in capsys.readouterr().out
    path = tmp_path / "checkpoints" / "pca" / "last"
    checkpoint, before = load_checkpoint(path), path.read_bytes()
    net = checkpoint["model_states"]["net"]
    assert checkpoint["iter"] == 1 and checkpoint["optim_states"] == {} and bool(net["fitted"])
    assert net["weight"].shape == (10, 4096) and net["mean"].shape == (4096,)
    assert (tmp_path / "outputs" / "pca" / "1" / "traverse_random_img.gif").stat().st_size > 0
    assert main(argv) == 0
    assert "Already fitted" in capsys.readouterr().out and path.read_bytes() == before
    assert main(argv + ["--train", "False"]) == 0  # pictures from the checkpoint
    assert (tmp_path / "outputs" / "pca" / "from_checkpoint" / "1" / "reconstruction.png").exists()
    capsys.readouterr()
    assert main(argv[:-1] + ["50", "--resume_with_changes", "True"]) == 0  # another --fit_images: fitted again
    assert "fitting again" in capsys.readouterr().out and path.read_bytes() != before
    assert load_checkpoint(path)["method_state"] == {"fit_images": 50, "seed": 1}


@pytest.mark.parametrize("objective", ["factorvae", "btcvae", "dipvae_ii", "infogan", "pca", "ica"])
def test_the_encoder_gives_what_the_scores_read(tiny_dsprites, objective):
    """encode(x) -> (codes (B, z_dim), log-variances or None): the interface evaluation scores."""
    method = build("--objective", objective, "--dset_dir", str(tiny_dsprites))
    if not method.iterative:
        from dataset import DATASETS, load_dataset

        method.fit(load_dataset(DATASETS["dsprites"], tiny_dsprites))
    method.eval()
    codes, logvar = method.encoder.encode(torch.rand(5, 1, 64, 64))
    assert codes.shape == (5, 10) and method.encoder.z_dim == 10 and torch.isfinite(codes).all()
    assert (logvar is None) == (objective in ("infogan", "pca", "ica"))


# --------------------------------------------------------------------------- run scripts


def script_argv(objective: str) -> list[str]:
    """The arguments scripts/run_dsprites_<objective>.sh passes to main.py (without the pass-through "$@")."""
    text = (ROOT / "scripts" / f"run_dsprites_{objective}.sh").read_text()
    assert "set -eu" in text and '"$@"' in text
    words = shlex.split(next(line for line in text.replace("\\\n", " ").splitlines() if "python main.py" in line))
    return [w for w in words[words.index("main.py") + 1 :] if w != "$@"]


@pytest.mark.parametrize("objective", [name for name in METHODS if name not in ("H", "B")])
def test_each_run_script_uses_the_table_defaults_and_the_study_settings(objective):
    args, defaults = parse_args(script_argv(objective)), parse_args(["--objective", objective])
    assert (args.objective, args.dataset, args.z_dim, args.model) == (objective, "dsprites", 10, defaults.model)
    assert {f: getattr(args, f) for f in METHODS[objective].hyperparameters} == {
        f: getattr(defaults, f) for f in METHODS[objective].hyperparameters}
    if METHODS[objective].build(args, 1, "bernoulli", CPU).iterative:
        assert (args.max_iter, args.batch_size) == (300_000, 64)
        adam = METHODS[objective].defaults.get("lr", 1e-4), METHODS[objective].defaults.get("beta1", 0.9)
        assert (args.lr, args.beta1, args.beta2) == (*adam, 0.999)
    else:
        assert args.eval_metrics and args.fit_images == 50_000


@pytest.mark.parametrize("objective", ["infogan", "ica"])
def test_eval_metrics_runs_on_codes_without_a_posterior(tmp_path, tiny_dsprites, objective):
    """Evaluation reads a GAN's or a baseline's codes (no log-variance); this file has no factors, so the
    latent report alone is written (the scores themselves are tested with evaluation)."""
    argv = run_args(tmp_path, tiny_dsprites, "--objective", objective, "--max_iter", "1", "--batch_size", "8",
                    "--eval_metrics", "True", "--eval_scale", "0.01", "--save_output", "False", "--viz_name", "ev")
    assert main(argv) == 0
    written = list((tmp_path / "outputs" / "ev").glob("eval_1*.json"))
    assert len(written) == 1 and "latents" in json.loads(written[0].read_text())
