"""Entry point: parse the reference's command line, build the objects, hand them to the Solver.

    python main.py --dataset dsprites --objective B --model B --gamma 1000 --C_max 25 ...

Read on in solver.py (the loop), methods/ (one file per method; methods/base.py is their interface and
methods/losses.py the pure losses), model.py (the networks) and dataset.py (the data).
"""

import argparse
import json
import math
import signal
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from dataset import CHANNELS, DATASETS, DISTRIBUTIONS, BatchOrder, DataError, dataset_spec, load_dataset
from hardware.calibrate import cache_key, choose_by_timing
from hardware.precision import CHOICES as PRECISIONS
from hardware.precision import PRECISIONS as PRECISION_DTYPES
from hardware.precision import PrecisionChoice, announce, choose
from hardware.sizes import SizeError, available_memory, check_sizes, is_out_of_memory, memory_advice
from hardware.threads import ThreadGovernor, apply_threads, cpu_use, threads_for_busy
from methods import (
    METHODS,
    OPTIMIZER_DEFAULTS,
    Compute,
    adam_beta,
    build_method,
    flag_errors,
    ignored_flags,
    method_name,
    per_method_defaults,
    resolve_defaults,
)
from model import MODELS
from monitoring.loggers import build_logger
from monitoring.pictures import OutputWriter
from solver import Interrupted, NonFiniteLoss, Schedule, Solver, stop_raises
from storage.checkpoint import CheckpointError, load_checkpoint
from storage.checkpointer import Checkpointer
from storage.resume import checkpoint_path, resume
from storage.runlock import RunLock, RunLocked
from utils import (
    check_writable,
    flush_denormals,
    iter_count,
    keep_freed_memory,
    machine_facts,
    non_negative,
    pick_device,
    port_number,
    positive,
    seed_everything,
    str2bool,
)

MODEL_IMAGE_SIZE = 64  # every architecture is built for 64×64 inputs
NAME_BYTES = 200  # a file name may have 255 bytes; temporary files (.<name>.<random>.tmp) add to it


# metrics.DCI_ESTIMATORS, spelled out so that parsing flags does not import scikit-learn (a test keeps them equal).
DCI_ESTIMATORS = ("gbt", "sklearn", "hist")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default; a flag whose default depends on the method says so in its help instead."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train and score disentangled representations: β-VAE (Higgins et al. 2017, Burgess et al. "
                    "2018) and the methods they are compared with.", formatter_class=HelpFormatter)
    run = p.add_argument_group("run")
    run.add_argument("--train", default=True, type=str2bool,
                     help="train (True), or load the checkpoint and only draw pictures and score (False)")
    run.add_argument("--seed", default=1, type=int, help="random seed (weights, noise, data order)")
    run.add_argument("--cuda", default=True, type=str2bool, help="use the GPU when one is available")
    run.add_argument("--max_iter", default=int(1e6), type=non_negative(iter_count),
                     help="iterations to train (float literals such as 1.5e6 work)")
    run.add_argument("--batch_size", default=64, type=positive(int), help="images per iteration")
    run.add_argument("--threads", default=0, type=non_negative(int),
                     help="CPU threads for torch (and numba's DCI trees). 0: torch's choice, one per core, fewer "
                          "while other processes keep cores busy (at the start and while training; the run says "
                          "so). N: exactly N, with a warning on a busy machine")
    run.add_argument("--precision", default="auto", choices=PRECISIONS,
                     help="forward-pass precision, in training and in evaluation's encoder. auto: fp32 where "
                          "bf16 would be emulated; bf16 on a GPU that runs it natively; on a CPU with AVX512-BF16 "
                          "or AMX (uncapped by ONEDNN_MAX_CPU_ISA/ATEN_CPU_CAPABILITY), the faster of the two, "
                          "timed on this run's own step once per setting and cached; a resumed run keeps its "
                          "checkpoint's; the run's first line says which and why. bf16: always (emulated, many "
                          "times slower, on other CPUs). fp32: the reference's numerics. Weights, optimiser state "
                          "and losses stay fp32")
    run.add_argument("--channels_last", default=True, type=str2bool,
                     help="NHWC layout for the conv weights and batches: the same arithmetic in another order, "
                          "faster on CPU (bench.py)")
    run.add_argument("--compile", default=False, type=str2bool,
                     help="torch.compile the training forward (with CUDA graphs on a GPU); on CPU it measured no "
                          "faster, on AVX-512 or AVX2 (bench.py), and costs a one-off compile")

    method = p.add_argument_group("method and hyperparameters")
    method.add_argument("--objective", default="H", type=method_name, choices=list(METHODS), metavar="METHOD",
                        help="the method (any case): " + "; ".join(f"{k}: {v.summary}" for k, v in METHODS.items()))
    method.add_argument("--model", default=None, type=str.upper, choices=sorted(MODELS),
                        help="VAE architecture (default: the method's: H for objectives H and B as in the "
                             "reference, DLIB, disentanglement_lib's, for factorvae, btcvae, dipvae_i and dipvae_ii; "
                             "infogan, pca and ica have networks of their own)")
    method.add_argument("--z_dim", default=10, type=positive(int), help="number of latents")
    method.add_argument("--beta", default=None, type=float,
                        help=f"KL weight of H, TC weight of btcvae (default per method: {per_method_defaults('beta')})")
    method.add_argument("--gamma", default=None, type=float,
                        help="weight of |KL - C| for B, of the TC for factorvae (default per method: "
                             f"{per_method_defaults('gamma')})")
    method.add_argument("--C_max", default=None, type=float,
                        help=f"final capacity C of objective B, in nats (default: {per_method_defaults('C_max')})")
    method.add_argument("--C_stop_iter", default=int(1e5), type=positive(iter_count),
                        help="iteration at which C reaches C_max (objective B)")
    method.add_argument("--lambda_od", default=None, type=non_negative(float),
                        help="DIP-VAE's weight of the off-diagonal covariance terms (default per method: "
                             f"{per_method_defaults('lambda_od')})")
    method.add_argument("--lambda_d", default=None, type=non_negative(float),
                        help="DIP-VAE's weight of the diagonal covariance terms (default per method: "
                             f"{per_method_defaults('lambda_d')})")
    method.add_argument("--lr_D", default=None, type=positive(float),
                        help=f"learning rate of the discriminator's Adam (default per method: "
                             f"{per_method_defaults('lr_D')})")
    method.add_argument("--beta1_D", default=None, type=adam_beta,
                        help=f"its first-moment decay (default per method: {per_method_defaults('beta1_D')})")
    method.add_argument("--beta2_D", default=None, type=adam_beta,
                        help=f"its second-moment decay (default per method: {per_method_defaults('beta2_D')})")
    method.add_argument("--lambda_mi", default=None, type=non_negative(float),
                        help="InfoGAN's weight of the mutual-information term (default per method: "
                             f"{per_method_defaults('lambda_mi')})")
    method.add_argument("--noise_dim", default=None, type=non_negative(int),
                        help="InfoGAN's noise inputs beside the z_dim codes, uniform on [-1, 1] (default per "
                             f"method: {per_method_defaults('noise_dim')})")
    method.add_argument("--fit_images", default=50_000, type=positive(int),
                        help="images (a random subset drawn with --seed) that PCA and ICA are fitted on")

    optim = p.add_argument_group("optimiser (Adam)")
    optim.add_argument("--lr", default=None, type=positive(float),
                       help=f"learning rate (default: {OPTIMIZER_DEFAULTS['lr']:g}; per method: "
                            f"{per_method_defaults('lr')})")
    optim.add_argument("--beta1", default=None, type=float,
                       help=f"Adam's first-moment decay (default: {OPTIMIZER_DEFAULTS['beta1']:g}; per method: "
                            f"{per_method_defaults('beta1')})")
    optim.add_argument("--beta2", default=None, type=float,
                       help=f"Adam's second-moment decay (default: {OPTIMIZER_DEFAULTS['beta2']:g}; per method: "
                            f"{per_method_defaults('beta2')})")

    data = p.add_argument_group("data")
    data.add_argument("--dset_dir", default="data", type=str,
                      help="folder that holds the datasets (with --dataset folder: the folder of images itself)")
    data.add_argument("--dataset", default="dsprites", type=str.lower, choices=sorted(DATASETS), help="dataset")
    data.add_argument("--image_size", default=64, type=positive(int), help="must be 64 for these models")
    data.add_argument("--num_workers", default=2, type=non_negative(int), help="loader processes (image folders)")
    data.add_argument("--channels", default=None, type=int, choices=CHANNELS,
                      help="image channels: 1 (greyscale) or 3 (colour); default: the dataset's (dsprites 1, "
                           "celeba and 3dchairs 3), for --dataset folder detected from the images")
    data.add_argument("--distribution", default=None, choices=DISTRIBUTIONS,
                      help="decoder likelihood: bernoulli (binary images, line art) or gaussian (photographs); "
                           "default: the dataset's (dsprites bernoulli, celeba and 3dchairs gaussian), for "
                           "--dataset folder bernoulli for 1 channel and gaussian for 3")
    data.add_argument("--subset", default=None, type=positive(int),
                      help="train on a random subset of this many images, drawn with --seed (default: all)")

    viz = p.add_argument_group("monitoring and outputs")
    viz.add_argument("--viz_on", default=True, type=str2bool, help="stream to a visdom server")
    viz.add_argument("--viz_name", default="main", type=str,
                     help="run name: visdom environments, output and checkpoint folders")
    viz.add_argument("--viz_port", default=8097, type=port_number, help="visdom server port (1-65535)")
    viz.add_argument("--viz_server", default="http://localhost", type=str, help="visdom server address")
    viz.add_argument("--tensorboard", default=False, type=str2bool,
                     help="also write the records, pictures and scores as TensorBoard events under "
                          "<output_dir>/<viz_name>/tensorboard (view: tensorboard --logdir <output_dir>)")
    viz.add_argument("--save_output", default=True, type=str2bool, help="write pictures to output_dir")
    viz.add_argument("--output_dir", default="outputs", type=str, help="folder for logs, pictures and scores")
    viz.add_argument("--gather_step", default=1000, type=positive(iter_count), help="iterations per logged point")
    viz.add_argument("--display_step", default=10000, type=positive(iter_count),
                     help="iterations per status line and pictures")
    viz.add_argument("--top_latents", default=10, type=non_negative(int),
                     help="latents shown by name in traversal pictures, GIFs and per-latent curves: the most "
                          "informative (highest KL) first, the rest summarised in the curves; 0: all")

    evaluation = p.add_argument_group("evaluation")
    evaluation.add_argument("--eval_metrics", default=False, type=str2bool,
                            help="score the model (BetaVAE, FactorVAE, MIG, DCI, SAP, IRS, modularity and "
                                 "explicitness, the unsupervised scores, and a latent report): "
                                 "after training, or from the checkpoint with --train False")
    evaluation.add_argument("--eval_step", default=0, type=non_negative(iter_count),
                            help="also evaluate every N iterations during training (0: never)")
    evaluation.add_argument("--eval_scale", default=1.0, type=positive(float),
                            help="fraction of the published protocol's sample counts (only 1.0 gives scores "
                                 "comparable with papers)")
    evaluation.add_argument("--eval_seed", default=0, type=int,
                            help="the evaluation protocol's seed: every score's random draws, the latent report's "
                                 "and UDR's images. Independent of --seed (which seeds training), so models "
                                 "trained with different seeds are scored on the same draws; 0, as "
                                 "disentanglement_lib scores, gives its numbers for the same representation")
    evaluation.add_argument("--dci_estimator", default="gbt", choices=DCI_ESTIMATORS,
                            help="DCI's per-factor classifier. gbt: disentanglement_lib's gradient-boosted "
                                 "trees, re-implemented exactly and fast (evaluation/gbt.py); sklearn: "
                                 "scikit-learn's own GradientBoostingClassifier, the same model, minutes slower; "
                                 "hist: histogram "
                                 "boosting, an approximation with slightly different numbers")

    ckpt = p.add_argument_group("checkpoints")
    ckpt.add_argument("--save_step", default=10000, type=positive(iter_count), help="iterations per `last` save")
    ckpt.add_argument("--snapshot_step", default=100000, type=positive(iter_count),
                      help="iterations per numbered snapshot (one is also written at the end)")
    ckpt.add_argument("--ckpt_dir", default="checkpoints", type=str, help="folder for the checkpoints")
    ckpt.add_argument("--ckpt_name", default="last", type=str, help="checkpoint to resume from and save to")
    ckpt.add_argument("--resume_with_changes", default=False, type=str2bool,
                      help="resume although the method's hyperparameters, --lr/--beta1/--beta2, --seed, "
                           "--batch_size or the data differ from the checkpoint's; the changes take full effect "
                           "and are recorded")
    return p


def _check_name(parser, flag: str, value: str) -> None:
    """Run and checkpoint names are single folder or file names: nothing may escape ckpt_dir or output_dir."""
    if value in ("", ".", "..") or "/" in value or "\\" in value or value.startswith("~") or ".." in value.split("."):
        parser.error(f"argument --{flag}: must be a plain name without path separators or '..', got {value!r}; "
                     "put folders in --ckpt_dir or --output_dir instead")
    if len(value.encode()) > NAME_BYTES:
        parser.error(f"argument --{flag}: at most {NAME_BYTES} bytes (it names files and folders), got "
                     f"{len(value.encode())}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Checks across or beyond the argparse types; all run before any data is read.
    if args.image_size != MODEL_IMAGE_SIZE:
        parser.error(f"--image_size {args.image_size}: every model here takes 64×64 images; use 64")
    for flag in ("seed", "eval_seed"):
        if not 0 <= getattr(args, flag) < 2**32:
            parser.error(f"argument --{flag}: must be between 0 and 2**32 - 1 (what NumPy accepts), "
                         f"got {getattr(args, flag)}")
    for message in ignored_flags(args, {action.dest: action.default for action in parser._actions}):
        print(f"warning: {message}", file=sys.stderr)
    resolve_defaults(args)
    for message in flag_errors(args):
        parser.error(message)
    for flag in ("beta1", "beta2"):
        if not 0 <= getattr(args, flag) < 1:
            parser.error(f"argument --{flag}: Adam needs 0 <= {flag} < 1, got {getattr(args, flag)}")
    for flag in ("beta", "gamma", "C_max"):
        value = getattr(args, flag)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            parser.error(f"argument --{flag}: must be a number >= 0, got {value}")
    for flag in ("viz_name", "ckpt_name"):
        _check_name(parser, flag, getattr(args, flag))
    return args


def data_identity(args, data) -> dict:
    """What tells one dataset file from another without reading it: a different file changes the data
    order of a resumed run, so storage/resume.py compares this."""
    path = DATASETS[args.dataset].path(args.dset_dir)
    identity = {"dataset": args.dataset, "images": len(data)}
    if path.is_file():
        identity["bytes"] = path.stat().st_size
    if getattr(data, "full", None) is not None:  # a --subset: which one follows from its size, --seed and this
        identity["subset_of"] = len(data.full)
    return identity


def run_config(args: argparse.Namespace, spec, precision, data) -> dict:
    """The flags in effect plus derived facts; stored in every checkpoint, so it alone rebuilds the method."""
    return dict(vars(args), nc=spec.nc, decoder_distribution=spec.distribution, data=data_identity(args, data),
                precision_used=precision.name, precision_reason=precision.reason, machine=machine_facts())


def make_evaluator(data, device, run_dir: Path, args: argparse.Namespace, spec, precision, config: dict):
    """evaluator(method, step) -> the evaluation result; writes eval_<step>.json (and more) under run_dir.

    A model trained on a --subset is scored on the whole dataset: the scores draw images by their factors.
    `config` is the evaluated model's: the run's own when training, the checkpoint's for --train False."""
    data = getattr(data, "full", data)


    def evaluator(method, step: int) -> dict:
        from evaluation.evaluate import evaluate  # scikit-learn is only imported when scores are asked for

        path = checkpoint_path(args)
        provenance = {
            "checkpoint": {"path": str(path) if path.exists() else None, "iteration": step},
            "precision": precision.name, "precision_reason": precision.reason, "seed": config.get("seed", args.seed),
            "method": config.get("objective", args.objective), "model": config.get("model", args.model),
            "dataset": {"name": args.dataset, "path": str(spec.path(args.dset_dir)),
                        "subset": config.get("subset", args.subset)},
            "config": config,
        }
        if not args.train:
            keep_other_evaluation(run_dir, step, args, provenance)
        return evaluate(method.encoder, data, device, step, run_dir, seed=args.eval_seed, scale=args.eval_scale,
                        autocast_dtype=precision.dtype, dci_estimator=args.dci_estimator, provenance=provenance)

    return evaluator


class EvaluationExists(Exception):
    """--train False would replace an evaluation of another checkpoint or with other settings."""


def keep_other_evaluation(out_dir: Path, step: int, args: argparse.Namespace, provenance: dict) -> None:
    """Raise EvaluationExists, before any work, if the file this evaluation would write holds a different one
    (another checkpoint, config, protocol seed, DCI estimator or precision). The same evaluation again gives
    the same numbers, so it may replace the file. Training runs only ever re-evaluate the same model."""
    from evaluation.evaluate import result_stem

    path = out_dir / f"{result_stem(step, args.eval_scale)}.json"
    if not path.exists():
        return
    try:
        earlier = json.loads(path.read_text())["provenance"]
        was = (earlier["checkpoint"], earlier["config"], earlier["protocol"]["seed"],
               earlier["protocol"]["dci_estimator"], earlier["precision"]["used"])
    except (OSError, ValueError, KeyError, TypeError):
        print(f"WARNING: {path} is unreadable or not an evaluation; this evaluation replaces it.", file=sys.stderr)
        return
    now = (provenance["checkpoint"], json.loads(json.dumps(provenance["config"], default=str)), args.eval_seed,
           args.dci_estimator, provenance["precision"])
    names = ("checkpoint", "config", "--eval_seed", "--dci_estimator", "precision")
    differ = [name for name, a, b in zip(names, was, now, strict=True) if a != b]
    if differ:
        raise EvaluationExists(f"{path} holds another evaluation (its {' and '.join(differ)} "
                               f"{'differ' if len(differ) > 1 else 'differs'} from this one's); "
                               "it is kept and nothing was evaluated. Move it away, or pass another --output_dir.")


def pick_threads(requested: int, device: torch.device) -> tuple[int, str | None]:
    """--threads, or on a CPU whose cores other processes keep busy, fewer (hardware/threads.py); with what to say."""
    threads = apply_threads(requested)
    if device.type != "cpu" or threads == 1:
        return threads, None
    chosen, message = threads_for_busy(requested, threads, cpu_use())
    return apply_threads(chosen), message


def pick_precision(args: argparse.Namespace, device: torch.device, spec, busy: bool = False) -> PrecisionChoice:
    """--precision: the rule of hardware/precision.py, or, for auto where bf16 runs natively on a CPU, the faster
    of fp32 and bf16 by timing this run's own step (hardware/calibrate.py). A resumed run keeps its checkpoint's."""
    rule = choose(args.precision, device)
    # Not timed: PCA and ICA (no step), and --compile (compiling both variants would cost minutes).
    if args.precision != "auto" or rule.name != "bf16" or device.type != "cpu" or args.compile or \
            not getattr(METHODS[args.objective].build, "iterative", True):
        return rule
    try:
        resumed = args.train and checkpoint_path(args).is_file()
        saved = load_checkpoint(checkpoint_path(args)).get("config") if resumed else None
    except CheckpointError:
        saved = None  # resume() says what is wrong with it
    if isinstance(saved, dict) and saved.get("precision_used") in PRECISION_DTYPES:
        return PrecisionChoice(saved["precision_used"], "auto: kept from the checkpoint this run resumes, so "
                                                        "the run goes on in the arithmetic it began in")
    what = "training step" if args.train else "encoder's forward pass"
    key = cache_key(what, objective=args.objective, model=args.model, z_dim=args.z_dim, batch=args.batch_size,
                    nc=spec.nc, channels_last=args.channels_last)
    steps = {name: timed_step(args, spec, device, dtype) for name, dtype in PRECISION_DTYPES.items()}
    return choose_by_timing(rule, key, steps, what, busy)


def timed_step(args: argparse.Namespace, spec, device: torch.device, dtype):
    """One call of what the run repeats, in `dtype`: a training step of a fresh method on a batch of noise (the
    time of these dense convolutions does not depend on the pixels), or, for --train False, an encoder pass."""
    compute = Compute(device, dtype, args.channels_last, args.compile)

    def step():
        if "method" not in made:  # built on the first call: timing failures are caught in one place
            made["method"] = build_method(args, spec.nc, spec.distribution, compute)
            made["x"] = torch.rand(args.batch_size if args.train else 256, spec.nc, 64, 64, device=device)
        method, x = made["method"], made["x"]
        if args.train:
            method.train_step(x, 1)
        else:
            with torch.no_grad(), compute.autocast():
                method.encoder.encode(compute.layout(x))

    made: dict = {}
    return step


def build_solver(args: argparse.Namespace) -> Solver:
    spec = dataset_spec(args)  # the table's entry with this run's --channels, --distribution and --subset
    keep_freed_memory()  # every step reuses the last step's memory instead of mapping it afresh
    flush_denormals()  # a trained model's tiny Adam moments would halve the CPU's speed (utils.flush_denormals)
    device = pick_device(args.cuda)
    default_threads = torch.get_num_threads()
    threads, busy = pick_threads(args.threads, device)  # before any timing: the choice depends on the threads
    if busy:
        print(busy, file=sys.stderr)
    seed_everything(args.seed)
    data = load_dataset(spec, args.dset_dir)
    full = getattr(data, "full", data)
    # The images whose codes an evaluation holds: each dataset image once, or, where every draw renders new
    # pixels (the dSprites variants), every image the protocol draws (about 2.95 million at scale 1).
    encoded = len(full)
    if hasattr(full, "observe_chunks"):
        from evaluation.metrics import images_drawn  # here: the scores' imports are not needed before

        encoded = images_drawn(args.eval_scale)
    for warning in check_sizes(args, encoded, available_memory(device), available_memory()):
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    # After the size checks: timing runs a training step at the run's batch size, which must fit first.
    precision = pick_precision(args, device, spec, busy=busy is not None)
    print(announce(precision))
    if hasattr(data, "to"):
        data = data.to(device)  # in-memory data lives where the model does: no host->device copy per batch
    compute = Compute(device, precision.dtype, args.channels_last, args.compile)
    method = build_method(args, spec.nc, spec.distribution, compute)
    config = run_config(args, spec, precision, data)
    start_step, checkpoint = resume(args, config, method)
    # --train False writes its pictures, records and evaluations into a folder of its own, never into the
    # training run's (which may be running beside it), and records the checkpoint's config, not the flags.
    run_dir = output_folder(args)
    evaluated = config if args.train or checkpoint is None else checkpoint.get("config") or config
    # A resumed run moves the stopped run's records after its checkpoint aside, so curves are not doubled.
    logger = build_logger(run_dir, args.viz_on, args.viz_name, args.viz_server, args.viz_port,
                          save_curves=args.save_output, resume_step=start_step if args.train else None,
                          top_latents=args.top_latents, tensorboard=args.tensorboard)
    solver = Solver(
        method=method, data=data, order=BatchOrder(len(data), args.batch_size, args.seed), device=device,
        schedule=Schedule(args.max_iter, args.gather_step, args.display_step, args.save_step, args.snapshot_step,
                          args.eval_step),
        logger=logger,
        # Pictures of the fixed images (dataset indices) come from the whole dataset, also for a --subset.
        outputs=OutputWriter(run_dir, getattr(data, "full", data), spec.traverse_indices, device, args.seed,
                             args.save_output, args.top_latents),
        checkpointer=Checkpointer(Path(args.ckpt_dir) / args.viz_name, args.ckpt_name, config),
        num_workers=args.num_workers, start_step=start_step,
        evaluator=make_evaluator(data, device, run_dir, args, spec, precision, evaluated),
    )
    if not args.threads and device.type == "cpu" and hasattr(data, "to"):
        # Threads follow other jobs' use of the CPUs while training (hardware/threads.py). Not with folder
        # data: its DataLoader workers are this run's own processes, and would count as other jobs.
        solver.pace = ThreadGovernor(default_threads, threads)
    if checkpoint is not None:
        solver.checkpointer.resumed_step = start_step
        if args.train:
            solver.load_state(checkpoint)
    return solver


def output_folder(args: argparse.Namespace) -> Path:
    """outputs/<viz_name> for training; outputs/<viz_name>/from_checkpoint for --train False."""
    run_dir = Path(args.output_dir) / args.viz_name
    return run_dir if args.train else run_dir / "from_checkpoint"


class RecordsLost(Exception):
    """Training ended, but some metrics.jsonl records could not be written."""


def run(args: argparse.Namespace, lock: RunLock | None = None) -> None:
    """Build, then train (or draw pictures), then score as asked."""
    solver = build_solver(args)
    if lock is not None:
        solver.guard = lock.ensure
    if args.train:
        solver.train()
    else:
        solver.check_loaded()
        solver.display()
    if args.eval_metrics:
        solver.evaluate()
    solver.logger.close()
    lost = solver.logger.unwritten()
    if lost:
        log = output_folder(args) / "metrics.jsonl"
        raise RecordsLost(f"{lost} record(s) could not be written to {log} (the disk is full or unwritable); the "
                          "checkpoints are intact. Free space and run the same command again to resume.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ckpt_folder, run_dir = Path(args.ckpt_dir) / args.viz_name, Path(args.output_dir) / args.viz_name
    try:
        # A training run owns its folders for its whole life; --train False only reads the checkpoint
        # and writes files of its own, so it may run beside training.
        with stop_raises(), RunLock(ckpt_folder, run_dir) if args.train else nullcontext() as lock:
            if args.train:
                check_writable(ckpt_folder, "--ckpt_dir")
            check_writable(run_dir, "--output_dir")
            run(args, lock)
    except Interrupted as stop:
        return 128 + stop.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP
    except KeyboardInterrupt as stop:  # a signal before training began, while evaluating, or a second while saving
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"error: stopped by {signal.Signals(signum).name}; nothing was due to be saved (or a save under way "
              "was abandoned for a second signal): the checkpoint on disk, if any, is the last one completely "
              "written, and evaluation files are only ever written whole. Run the same command again to continue.",
              file=sys.stderr)
        return 128 + signum
    except (DataError, CheckpointError, NonFiniteLoss, RunLocked, RecordsLost, SizeError, EvaluationExists) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        print(f"error: {memory_advice(args)}. ({str(err).splitlines()[0][:200]})", file=sys.stderr)
        return 1
    except OSError as err:  # a file that could not be written: full disk, lost mount, permissions
        again = ("run the same command again to resume" if checkpoint_path(args).exists()
                 else "run the same command again")
        print(f"error: {err}. Free space or fix the path, then {again}.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
