"""The methods: one table of facts behind `--objective`, and the one function that builds a method.

Each entry says what the method is, which flags are its hyperparameters (the ones a resumed run
may not change silently, and the ones a study sweeps), the defaults of flags whose default depends
on the method, and where those defaults come from. Read methods/base.py for the interface.

The methods beside β-VAE follow disentanglement_lib (Locatello et al. 2019, "Challenging Common
Assumptions in the Unsupervised Learning of Disentangled Representations"). Its study
(config/unsupervised_study_v1) trains every model for 300,000 steps of batch 64 with Adam (lr 1e-4,
betas 0.9 and 0.999; the FactorVAE discriminator lr 1e-4, betas 0.5 and 0.9) on its conv_encoder and
deconv_decoder (model DLIB here), and sweeps one hyperparameter per method over six values; as the
single default, each method takes the value disentanglement_lib's own training test
(methods/unsupervised/train_test.py) gives it, one of the study's six.
"""

import argparse
import math
from dataclasses import dataclass, field

from methods.base import Compute, Method
from methods.baselines import ICABaseline, PCABaseline
from methods.betavae import BetaVAE
from methods.btcvae import BetaTCVAE
from methods.dipvae import DIPVAE_I, DIPVAE_II
from methods.factorvae import FactorVAE
from methods.infogan import InfoGAN

STUDY = "disentanglement_lib's unsupervised_study_v1 (Locatello et al. 2019)"
FACTOR_VAE_DISCRIMINATOR = {"lr_D": 1e-4, "beta1_D": 0.5, "beta2_D": 0.9}  # the study's shared.gin
# Adam for every method that names no other: the reference's and disentanglement_lib's shared.gin. They fill
# --lr/--beta1/--beta2 only when those are left at None (a per-method default), before any other method's.
OPTIMIZER_DEFAULTS = {"lr": 1e-4, "beta1": 0.9, "beta2": 0.999}


@dataclass(frozen=True)
class MethodSpec:
    name: str  # the --objective value
    summary: str  # one line for --help
    build: type  # (args, nc, distribution, compute) -> Method
    hyperparameters: tuple[str, ...]  # the flags that define its objective
    defaults: dict = field(default_factory=dict)  # flag -> default, for flags whose default is per method
    model: str | None = "H"  # the architecture --model defaults to (None: the method has its own networks)
    source: str = ""  # where the defaults come from
    # flag -> (another flag, factor): a default derived from another flag's value (DIP-VAE's λ_d = k·λ_od)
    derived: dict = field(default_factory=dict)


METHODS: dict[str, MethodSpec] = {
    "H": MethodSpec(
        "H", "β-VAE, Higgins et al. 2017: recon + beta·KL (beta 1: a plain VAE)", BetaVAE, ("beta",),
        defaults={"beta": 4.0}, source="Higgins et al. 2017; the 1Konny/Beta-VAE command line"),
    "B": MethodSpec(
        "B", "capacity-annealed β-VAE, Burgess et al. 2018: recon + gamma·|KL − C|, C from 0 to C_max",
        BetaVAE, ("gamma", "C_max", "C_stop_iter"), defaults={"gamma": 1000.0, "C_max": 25.0},
        source="Burgess et al. 2018 (dSprites: gamma 1000, C_max 25 nats over 1e5 iterations)"),
    "factorvae": MethodSpec(
        "factorvae", "FactorVAE, Kim & Mnih 2018: recon + KL + gamma·TC, TC from a discriminator of z against "
        "z permuted per latent", FactorVAE, ("gamma", "lr_D", "beta1_D", "beta2_D"),
        defaults={"gamma": 10.0, **FACTOR_VAE_DISCRIMINATOR}, model="DLIB",
        source=f"{STUDY}: gamma swept over 10, 20, 30, 40, 50, 100 (default 10, train_test.py); discriminator "
               "Adam lr 1e-4, betas 0.5, 0.9 (shared.gin)"),
    "btcvae": MethodSpec(
        "btcvae", "β-TCVAE, Chen et al. 2018: recon + KL + (beta − 1)·TC, TC by minibatch weighted sampling",
        BetaTCVAE, ("beta",), defaults={"beta": 10.0}, model="DLIB",
        source=f"{STUDY}: beta swept over 1, 2, 4, 6, 8, 10 (default 10, train_test.py)"),
    "dipvae_i": MethodSpec(
        "dipvae_i", "DIP-VAE-I, Kumar et al. 2018: recon + KL + lambda_od·offdiag(Cov[mu])² + "
        "lambda_d·(diag(Cov[mu]) − 1)²", DIPVAE_I, ("lambda_od", "lambda_d"), defaults={"lambda_od": 10.0},
        derived={"lambda_d": ("lambda_od", 10.0)}, model="DLIB",
        source=f"{STUDY}: lambda_od swept over 1, 2, 5, 10, 20, 50 (default 10, train_test.py), "
               "lambda_d = 10·lambda_od"),
    "dipvae_ii": MethodSpec(
        "dipvae_ii", "DIP-VAE-II, Kumar et al. 2018: as DIP-VAE-I on Cov[z] = E[Sigma] + Cov[mu]", DIPVAE_II,
        ("lambda_od", "lambda_d"), defaults={"lambda_od": 10.0}, derived={"lambda_d": ("lambda_od", 1.0)},
        model="DLIB",
        source=f"{STUDY}: lambda_od swept over 1, 2, 5, 10, 20, 50 (default 10, train_test.py), "
               "lambda_d = lambda_od"),
    "infogan": MethodSpec(
        "infogan", "InfoGAN, Chen et al. 2016: a GAN whose recognition head Q recovers its z_dim uniform codes "
        "(lambda_mi·E[−log Q(c|G(c))])", InfoGAN, ("lambda_mi", "noise_dim", "lr_D", "beta1_D", "beta2_D"),
        defaults={"lambda_mi": 1.0, "noise_dim": 0, "lr": 1e-3, "beta1": 0.5, "beta2": 0.999, "lr_D": 2e-4,
                  "beta1_D": 0.5, "beta2_D": 0.999},
        model=None,
        source="openai/InfoGAN (info_reg_coeff 1.0; Adam with beta1 0.5, lr 2e-4 for D and 1e-3 for G)"),
    "pca": MethodSpec(
        "pca", "PCA: the z_dim leading principal components of the images, whitened (a baseline, fitted once)",
        PCABaseline, ("fit_images",), model=None, source="Higgins et al. 2017's baselines; scikit-learn PCA"),
    "ica": MethodSpec(
        "ica", "ICA: FastICA's z_dim independent components of the images (a baseline, fitted once)",
        ICABaseline, ("fit_images",), model=None, source="Higgins et al. 2017's baselines; scikit-learn FastICA"),
}


# Names people type for a method, and the --objective that means it: the hint of an unknown name.
ALIASES = {
    "beta": "H", "betavae": "H", "beta_vae": "H", "beta-vae": "H", "bvae": "H", "higgins": "H",
    "vae": "H --beta 1", "burgess": "B", "capacity": "B", "annealed": "B", "factor": "factorvae",
    "factor_vae": "factorvae", "tcvae": "btcvae", "beta_tcvae": "btcvae", "beta-tcvae": "btcvae",
    "dipvae": "dipvae_i or dipvae_ii", "dip-vae": "dipvae_i or dipvae_ii", "dip_vae": "dipvae_i or dipvae_ii",
}


def method_name(value: str) -> str:
    """argparse type for --objective: the table's spelling of a name given in any case; a known alias is an
    error that names the method meant (`--objective beta` -> H)."""
    names = {name.lower(): name for name in METHODS}
    key = value.strip().lower()
    if key in names:
        return names[key]
    if key in ALIASES:
        meant = ALIASES[key]
        raise argparse.ArgumentTypeError(f"no method {value!r}; did you mean --objective {meant}? (H is β-VAE, "
                                         "Higgins et al. 2017; B the capacity-annealed β-VAE, Burgess et al. 2018; "
                                         f"all: {', '.join(METHODS)})")
    return value  # argparse's choices= then lists the methods


def ignored_flags(args, defaults: dict) -> list[str]:
    """Method hyperparameters given on the command line that the chosen method does not use, as warnings
    (`--beta 4 --objective B`: B weighs |KL − C| by --gamma). defaults: the parser's, to tell what was given."""
    own = set(METHODS[args.objective].hyperparameters)
    others = {flag for spec in METHODS.values() for flag in spec.hyperparameters} - own
    given = sorted(flag for flag in others if getattr(args, flag, None) != defaults.get(flag))
    uses = ", ".join(f"--{flag}" for flag in METHODS[args.objective].hyperparameters) or "no hyperparameter flag"
    return [f"--{flag} {getattr(args, flag)} has no effect with --objective {args.objective}, which uses {uses}"
            for flag in given]


def adam_beta(value: str) -> float:
    """argparse type for an Adam moment decay (--beta1_D, --beta2_D): a number in [0, 1)."""
    number = float(value)
    if not (0 <= number < 1 and math.isfinite(number)):
        raise argparse.ArgumentTypeError(f"Adam needs 0 <= beta < 1, got {value!r}")
    return number


def resolve_defaults(args) -> None:
    """Fill the flags left at None (in place): with the chosen method's default where it has one, else with
    the first method's that does (so `--objective H` still shows the reference's gamma 1000 and C_max 25).
    Derived defaults (DIP-VAE's lambda_d) are computed after, from the flags they follow."""
    spec = METHODS[args.objective]
    for defaults in (spec.defaults, OPTIMIZER_DEFAULTS, *(other.defaults for other in METHODS.values())):
        for flag, value in defaults.items():
            if getattr(args, flag, None) is None:
                setattr(args, flag, value)
    for other in (spec, *METHODS.values()):
        for flag, (base, factor) in other.derived.items():
            if getattr(args, flag, None) is None:
                setattr(args, flag, factor * getattr(args, base))
    if getattr(args, "model", None) is None:
        args.model = spec.model


def per_method_defaults(flag: str) -> str:
    """'H 4, btcvae 10' for --help: the default of a flag whose default depends on --objective."""
    parts = [f"{name} {spec.defaults[flag]:g}" for name, spec in METHODS.items() if flag in spec.defaults]
    parts += [f"{name} {factor:g}·{spec.derived[flag][0]}" for name, spec in METHODS.items()
              if flag in spec.derived for factor in (spec.derived[flag][1],)]
    return ", ".join(parts)


def flag_errors(args) -> list[str]:
    """Flags that do not fit the chosen method, as messages naming them (after resolve_defaults)."""
    spec = METHODS[args.objective]
    if spec.model is None and getattr(args, "model", None) is not None:
        return [f"argument --model: {args.objective} has networks of its own and no --model; leave it out"]
    return []


def build_method(args, nc: int, distribution: str, compute: Compute) -> Method:
    return METHODS[args.objective].build(args, nc, distribution, compute)


__all__ = ["METHODS", "OPTIMIZER_DEFAULTS", "Compute", "Method", "MethodSpec", "adam_beta", "build_method",
           "flag_errors", "ignored_flags", "method_name", "per_method_defaults", "resolve_defaults"]
