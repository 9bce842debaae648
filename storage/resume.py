"""Resuming a run: find its checkpoint, say what changed since, refuse silent changes, restore it.

Flags fall into three kinds when a run is resumed:

- how long, how often and where (FREE_FLAGS): change freely, and the run lists what changed;
- the architecture (checkpoint.ARCHITECTURE_KEYS): a different one cannot be resumed at all;
- everything else that defines the run being continued (the method's hyperparameters, learning
  rate and Adam betas, seed, batch size, the data): a change needs `--resume_with_changes True`.
  Without it the run refuses and says how; with it the change takes full effect (the optimiser's
  learning rate too) and is recorded in the checkpoint's config under `changes`.

The saved config only ever holds the values in effect.
"""

import argparse
import os
from pathlib import Path

import torch

from methods import METHODS, Compute, Method, build_method
from storage.checkpoint import START_FRESH, CheckpointError, check_compatible, load_checkpoint, restore, validate_config

FREE_FLAGS = {
    "max_iter", "gather_step", "display_step", "save_step", "snapshot_step", "eval_step", "eval_metrics",
    "eval_scale", "eval_seed", "dci_estimator", "viz_on", "tensorboard", "viz_name", "viz_port", "viz_server",
    "save_output", "output_dir",
    "ckpt_dir", "ckpt_name", "dset_dir", "num_workers", "cuda", "train", "precision", "channels_last", "compile",
    "threads",
    "top_latents", "resume_with_changes",
}
# Derived entries of the config: not flags, so not compared (the data is compared through `data`).
DERIVED = {"nc", "decoder_distribution", "precision_used", "precision_reason", "changes", "machine"}


def checkpoint_path(args) -> Path:
    return Path(args.ckpt_dir) / args.viz_name / args.ckpt_name


def config_changes(saved: dict, config: dict) -> list[tuple[str, object, object]]:
    """(flag, checkpoint's value, this run's value) for every flag that differs, sorted by flag."""
    keys = (set(saved) | set(config)) - DERIVED
    return sorted((k, saved.get(k), config.get(k)) for k in keys if saved.get(k) != config.get(k))


def _irrelevant(objective: str) -> set[str]:
    """Hyperparameters of other methods: changing them has no effect on this one."""
    others = {flag for spec in METHODS.values() for flag in spec.hyperparameters}
    return others - set(METHODS[objective].hyperparameters) if objective in METHODS else set()


def _show(flag: str, value) -> str:
    return "(unset)" if value is None else repr(value) if isinstance(value, str) else f"{value}"


def resume(args, config: dict, method) -> tuple[int, dict | None]:
    """Load ckpt_dir/viz_name/ckpt_name when it exists; say plainly what happened and what changed.

    For --train False the checkpoint is only loaded (weights, no optimiser or RNG state).
    """
    path = checkpoint_path(args)
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
    validate_config(checkpoint, path)
    check_compatible(checkpoint, config, path)
    step = int(checkpoint["iter"])
    if not args.train:
        restore(checkpoint, path, method, with_optimizers=False)
        print(f"Loaded {path} (iteration {step}).")
        return step, checkpoint
    saved = checkpoint.get("config")
    changed = []
    if saved is None:
        print(f"{path} records no flags (a reference checkpoint), so changes since it cannot be listed.")
    else:
        changed = _review_changes(args, saved, config, path, step)
        if saved.get("changes"):
            config["changes"] = list(saved["changes"])
    restore(checkpoint, path, method, with_optimizers=True)
    if changed:
        _apply_changes(args, config, saved, changed, step)
    print(f"Resumed from {path} at iteration {step}.")
    return step, checkpoint


def _review_changes(args, saved: dict, config: dict, path: Path, step: int) -> list:
    """Print the allowed changes; refuse guarded ones unless --resume_with_changes; return those applied."""
    changes = config_changes(saved, config)
    irrelevant = _irrelevant(config["objective"])
    free = [c for c in changes if c[0] in FREE_FLAGS or c[0] in irrelevant]
    guarded = [c for c in changes if c not in free]
    if free:
        print("Changed since the checkpoint: " + "; ".join(
            f"--{f} {_show(f, old)} -> {_show(f, new)}" + (" (no effect on this method)" if f in irrelevant else "")
            for f, old, new in free) + ".")
    if not guarded:
        return []
    listed = "; ".join(f"{'the data' if f == 'data' else '--' + f}: {_show(f, old)} in the checkpoint, "
                       f"{_show(f, new)} now" for f, old, new in guarded)
    if not args.resume_with_changes:
        raise CheckpointError(
            f"{path} (iteration {step}) was trained with other settings ({listed}). Resuming would silently "
            "change the run being continued. To continue it as it was, pass its original values. To continue it "
            f"with these changes from iteration {step} on, add --resume_with_changes True (they take full effect "
            f"and are recorded in the checkpoint). {START_FRESH}")
    print(f"Resuming with changes (--resume_with_changes True): {listed}.")
    return guarded


def _apply_changes(args, config: dict, saved: dict, changed: list, step: int) -> None:
    """Make accepted changes take full effect and record them. Hyperparameters, data and the optimisers'
    lr and betas are in effect already: the method and the data were built from this run's flags, and
    checkpoint.restore keeps the optimisers' flags over the saved ones."""
    flags = {f for f, _, _ in changed}
    if "seed" in flags:  # the data order follows the new seed from here; so does the sampling noise
        torch.manual_seed(args.seed)
    config["changes"] = list(saved.get("changes", [])) + [
        {"iter": step, "flag": f, "from": old, "to": new} for f, old, new in changed]


def method_from_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Method:
    """Rebuild any method from its checkpoint file alone: the config it carries names the method, the
    architecture and every hyperparameter; the weights are loaded (not the optimisers or RNG states).

    For notebooks and tools: `method_from_checkpoint("pretrained/dsprites_B/last").encoder.encode(x)`.
    """
    path = Path(path)
    checkpoint = load_checkpoint(path)
    config = checkpoint.get("config")
    if not isinstance(config, dict) or "objective" not in config:
        raise CheckpointError(f"{path} carries no run config (a reference checkpoint?): rebuild it with main.py's "
                              "flags and --train False instead.")
    args = argparse.Namespace(**config)
    method = build_method(args, config["nc"], config["decoder_distribution"], Compute(torch.device(device)))
    restore(checkpoint, path, method, with_optimizers=False)
    return method
