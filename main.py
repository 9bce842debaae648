"""Entry point: parse the reference's command line, build the objects, hand them to the Solver.

    python main.py --dataset dsprites --objective B --model B --gamma 1000 --C_max 25 ...

Read on in solver.py (the loop), model.py (the networks) and losses.py (the objectives).
"""

import argparse
import math
import os
import sys
from pathlib import Path

import torch

from checkpoint import CheckpointError, check_compatible, load_checkpoint, restore
from dataset import DATASETS, BatchOrder, DataError, load_dataset
from loggers import build_logger
from losses import OBJECTIVES, Objective
from model import MODELS, build_model
from solver import Checkpointer, Interrupted, NonFiniteLoss, OutputWriter, Schedule, Solver
from utils import iter_count, non_negative, pick_device, positive, seed_everything, str2bool

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
MODEL_IMAGE_SIZE = 64  # both architectures are built for 64×64 inputs


# metrics.DCI_ESTIMATORS, spelled out so that parsing flags does not import scikit-learn (a test keeps them equal).
DCI_ESTIMATORS = ("gbt", "sklearn", "hist")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="β-VAE training (Higgins et al. 2017, Burgess et al. 2018)")
    run = p.add_argument_group("run")
    run.add_argument("--train", default=True, type=str2bool, help="train (True) or only draw pictures (False)")
    run.add_argument("--seed", default=1, type=int, help="random seed")
    run.add_argument("--cuda", default=True, type=str2bool, help="use the GPU when one is available")
    run.add_argument("--max_iter", default=int(1e6), type=non_negative(iter_count), help="iterations to train")
    run.add_argument("--batch_size", default=64, type=positive(int))
    run.add_argument("--precision", default="bf16", choices=sorted(PRECISIONS),
                     help="forward-pass precision, in training and in evaluation's encoder. bf16 (default): "
                          "autocast; weights, optimizer state and losses "
                          "stay fp32, and loss curves stay within 3%% of fp32's (tests/test_precision.py); the step "
                          "measured 1.25-1.36x faster on a CPU with AVX512-BF16 (bench.py). fp32: the reference's "
                          "numerics; prefer it on CPUs without native bf16, which emulate it")
    run.add_argument("--channels_last", default=True, type=str2bool,
                     help="NHWC layout for the conv weights and batches: the same arithmetic in another order, "
                          "1.1-1.2x faster on CPU (bench.py)")
    run.add_argument("--compile", default=False, type=str2bool,
                     help="torch.compile the training forward (with CUDA graphs on a GPU). Off by default: on CPU "
                          "it measured no faster than the default, after a one-off compile of about 45 s")

    model = p.add_argument_group("model and objective")
    model.add_argument("--model", default="H", type=str.upper, choices=sorted(MODELS), help="architecture")
    model.add_argument("--objective", default="H", type=str.upper, choices=sorted(OBJECTIVES),
                       help="; ".join(f"{k}: {v}" for k, v in OBJECTIVES.items()))
    model.add_argument("--z_dim", default=10, type=positive(int), help="number of latents")
    model.add_argument("--beta", default=4, type=float, help="KL weight of objective H")
    model.add_argument("--gamma", default=1000, type=float, help="weight of |KL - C| in objective B")
    model.add_argument("--C_max", default=25, type=float, help="final capacity C of objective B (nats)")
    model.add_argument("--C_stop_iter", default=int(1e5), type=positive(iter_count),
                       help="iteration at which C reaches C_max")

    optim = p.add_argument_group("optimiser (Adam)")
    optim.add_argument("--lr", default=1e-4, type=positive(float))
    optim.add_argument("--beta1", default=0.9, type=float)
    optim.add_argument("--beta2", default=0.999, type=float)

    data = p.add_argument_group("data")
    data.add_argument("--dset_dir", default="data", type=str, help="folder that holds the datasets")
    data.add_argument("--dataset", default="dsprites", type=str.lower, choices=sorted(DATASETS))
    data.add_argument("--image_size", default=64, type=positive(int), help="must be 64 for these models")
    data.add_argument("--num_workers", default=2, type=non_negative(int), help="loader processes (image folders)")

    viz = p.add_argument_group("monitoring and outputs")
    viz.add_argument("--viz_on", default=True, type=str2bool, help="stream to a visdom server")
    viz.add_argument("--viz_name", default="main", type=str, help="run name: visdom env, output and ckpt folder")
    viz.add_argument("--viz_port", default=8097, type=int)
    viz.add_argument("--viz_server", default="http://localhost", type=str)
    viz.add_argument("--save_output", default=True, type=str2bool, help="write pictures to output_dir")
    viz.add_argument("--output_dir", default="outputs", type=str)
    viz.add_argument("--gather_step", default=1000, type=positive(iter_count), help="iterations per logged point")
    viz.add_argument("--display_step", default=10000, type=positive(iter_count), help="iterations per display")

    evaluation = p.add_argument_group("evaluation")
    evaluation.add_argument("--eval_metrics", default=False, type=str2bool,
                            help="score the model (BetaVAE, FactorVAE, MIG, DCI, SAP and a latent report): "
                                 "after training, or from the checkpoint with --train False")
    evaluation.add_argument("--eval_step", default=0, type=non_negative(iter_count),
                            help="also evaluate every N iterations during training (0: never)")
    evaluation.add_argument("--eval_scale", default=1.0, type=positive(float),
                            help="fraction of the published protocol's sample counts (1.0: comparable scores)")
    evaluation.add_argument("--dci_estimator", default="gbt", choices=DCI_ESTIMATORS,
                            help="DCI's per-factor classifier. gbt (default): disentanglement_lib's gradient-boosted "
                                 "trees, re-implemented exactly and fast (gbt.py); sklearn: scikit-learn's own "
                                 "GradientBoostingClassifier, the same model, minutes slower; hist: histogram "
                                 "boosting, an approximation with slightly different numbers")

    ckpt = p.add_argument_group("checkpoints")
    ckpt.add_argument("--save_step", default=10000, type=positive(iter_count), help="iterations per `last` save")
    ckpt.add_argument("--snapshot_step", default=100000, type=positive(iter_count),
                      help="iterations per numbered snapshot (one is also written at the end)")
    ckpt.add_argument("--ckpt_dir", default="checkpoints", type=str)
    ckpt.add_argument("--ckpt_name", default="last", type=str, help="checkpoint to resume from and save to")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Checks across or beyond the argparse types; all run before any data is read.
    if args.image_size != MODEL_IMAGE_SIZE:
        parser.error(f"--image_size {args.image_size}: the H and B models take 64×64 images; use 64")
    if not 0 <= args.seed < 2**32:
        parser.error(f"argument --seed: must be between 0 and 2**32 - 1 (what NumPy accepts), got {args.seed}")
    for flag in ("beta1", "beta2"):
        if not 0 <= getattr(args, flag) < 1:
            parser.error(f"argument --{flag}: Adam needs 0 <= {flag} < 1, got {getattr(args, flag)}")
    for flag in ("beta", "gamma", "C_max"):
        if not (getattr(args, flag) >= 0 and math.isfinite(getattr(args, flag))):
            parser.error(f"argument --{flag}: must be a number >= 0, got {getattr(args, flag)}")
    for flag in ("viz_name", "ckpt_name"):
        if getattr(args, flag) in ("", ".", ".."):
            parser.error(f"argument --{flag}: must name a folder or file, got {getattr(args, flag)!r}")
    return args


def run_config(args: argparse.Namespace) -> dict:
    """The flags plus derived facts; stored in every checkpoint."""
    return dict(vars(args), nc=DATASETS[args.dataset].nc)


def resume(args, config: dict, model, optimizer) -> tuple[int, dict | None]:
    """Load ckpt_dir/viz_name/ckpt_name when it exists; say plainly what happened."""
    path = Path(args.ckpt_dir) / args.viz_name / args.ckpt_name
    if os.path.lexists(path) and not path.exists():
        raise CheckpointError(f"{path} is a link to a missing file; fix or remove the link, "
                              "or pass a new --viz_name to start fresh.")
    if not path.exists():
        if not args.train:
            raise CheckpointError(f"--train False needs a checkpoint, and there is none at {path}. "
                                  "Train first, or point --ckpt_dir/--viz_name/--ckpt_name at one.")
        print(f"Starting fresh: no checkpoint at {path}.")
        return 0, None
    checkpoint = load_checkpoint(path)
    check_compatible(checkpoint, config, path)
    restore(checkpoint, path, model, optimizer if args.train else None)
    print(f"Resumed from {path} at iteration {checkpoint['iter']}.")
    return int(checkpoint["iter"]), checkpoint


def make_evaluator(data, device: torch.device, run_dir: Path, args: argparse.Namespace):
    """evaluator(model, step) -> the summary scores; writes eval_<step>.json under run_dir."""

    def evaluator(model, step: int) -> dict:
        from evaluate import evaluate  # scikit-learn is only imported when scores are asked for

        result = evaluate(model, data, device, step, run_dir, seed=args.seed, scale=args.eval_scale,
                          autocast_dtype=PRECISIONS[args.precision], dci_estimator=args.dci_estimator)
        print(f"Evaluation written to {run_dir / f'eval_{step}.json'}")
        return result.get("summary", {})

    return evaluator


def build_solver(args: argparse.Namespace) -> Solver:
    spec = DATASETS[args.dataset]
    device = pick_device(args.cuda)
    seed_everything(args.seed)
    config = run_config(args)
    data = load_dataset(spec, args.dset_dir)
    if hasattr(data, "to"):
        data = data.to(device)  # in-memory data lives where the model does: no host->device copy per batch
    model = build_model(args.model, args.z_dim, spec.nc).to(device)
    if args.channels_last:  # NHWC weights: the convolutions then run without layout reorders
        model = model.to(memory_format=torch.channels_last)
    # fused: one kernel per step instead of a dozen per tensor; the same Adam update up to rounding.
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(args.beta1, args.beta2),
                                 fused=device.type in ("cpu", "cuda"))
    start_step, checkpoint = resume(args, config, model, optimizer)
    run_dir = Path(args.output_dir) / args.viz_name
    logger = build_logger(run_dir, args.viz_on, args.viz_name, args.viz_server, args.viz_port,
                          args.z_dim, args.objective, save_curves=args.save_output)
    solver = Solver(
        model=model, optimizer=optimizer,
        objective=Objective(args.objective, args.beta, args.gamma, args.C_max, args.C_stop_iter),
        distribution=spec.distribution, data=data, order=BatchOrder(len(data), args.batch_size, args.seed),
        device=device,
        schedule=Schedule(args.max_iter, args.gather_step, args.display_step, args.save_step, args.snapshot_step,
                          args.eval_step),
        logger=logger,
        outputs=OutputWriter(run_dir, data, spec.traverse_indices, device, args.seed, args.save_output),
        checkpointer=Checkpointer(Path(args.ckpt_dir) / args.viz_name, args.ckpt_name, config),
        num_workers=args.num_workers, autocast_dtype=PRECISIONS[args.precision], start_step=start_step,
        compile_model=args.compile, channels_last=args.channels_last,
        evaluator=make_evaluator(data, device, run_dir, args),
    )
    if checkpoint is not None:
        solver.load_state(checkpoint)
    return solver


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        solver = build_solver(args)
        if args.train:
            solver.train()
        else:
            solver.display()
        if args.eval_metrics:
            solver.evaluate()
        solver.logger.close()
    except Interrupted as stop:
        return 128 + stop.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    except KeyboardInterrupt:  # Ctrl-C before training began, or a second signal while saving
        print("error: interrupted; the checkpoint on disk is the last one completely written.", file=sys.stderr)
        return 130
    except (DataError, CheckpointError, NonFiniteLoss) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a file that could not be written: full disk, lost mount, permissions
        print(f"error: {err}. Free space or fix the path, then run the same command again to resume.",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
