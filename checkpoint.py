"""Checkpoints: plain save/load functions, atomic writes, safe loading.

A checkpoint holds what the reference's loader reads (`iter`,
`model_states.net`, `optim_states.optim`) plus the run's config and RNG states,
so it alone can rebuild its model and resume a run exactly. Loading uses
`torch.load(weights_only=True)`: tensors and plain containers only, so a
checkpoint from a stranger cannot run code.
"""

import io
import pickle
import re
from pathlib import Path

import torch

from model import MODELS, BetaVAE, build_model
from utils import atomic_write

# The config entries that must agree between a checkpoint and the flags to resume it, as the user knows them.
ARCHITECTURE_KEYS = {"model": "--model", "z_dim": "--z_dim", "nc": "image channels (set by --dataset)",
                     "objective": "--objective"}
_START_FRESH = ("To start fresh instead, pass a new --viz_name, or a --ckpt_name naming a file that does not "
                "exist yet; the files already there are left untouched.")


class CheckpointError(Exception):
    """A checkpoint that cannot be written, read or resumed; the message says what to do."""


def save_checkpoint(path: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    config: dict, extra: dict | None = None) -> None:
    """Write the checkpoint atomically: `path` holds the old or the new one, never half of one."""
    state = {
        "iter": step,
        "model_states": {"net": model.state_dict()},
        "optim_states": {"optim": optimizer.state_dict()},
        "config": dict(config),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        **(extra or {}),
    }
    buffer = io.BytesIO()  # serialise first, so a failure here never touches the disk
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint onto the CPU (a GPU checkpoint opens on a CPU-only machine).

    Raises CheckpointError, never anything else, for a file that is unsafe, damaged or not a checkpoint.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(err), re.IGNORECASE)
        if unsafe:
            raise CheckpointError(
                f"{path} was refused: it asks the loader to import {unsafe.group(1)}, and code named by a file "
                "could do anything. A β-VAE checkpoint holds only tensors and plain containers, so nothing in "
                f"this one was loaded or run. {_START_FRESH}"
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint: it is damaged or not a PyTorch file. "
                              f"{_START_FRESH}") from None
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read ({err}). {_START_FRESH}") from None
    except Exception as err:  # torch.load fails on a damaged file in many ways (zip, pickle, storage errors)
        reason = f"{type(err).__name__}: {str(err).splitlines()[0]}" if str(err) else type(err).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint: it is damaged or not a PyTorch file "
                              f"({reason}). {_START_FRESH}") from None
    states = checkpoint.get("model_states") if isinstance(checkpoint, dict) else None
    net = states.get("net") if isinstance(states, dict) else None
    if not isinstance(net, dict) or not isinstance(checkpoint.get("iter"), int):
        raise CheckpointError(f"{path} is not a β-VAE checkpoint (it lacks `iter` or `model_states.net`). "
                              f"{_START_FRESH}")
    return checkpoint


def describe_weights(state_dict: dict) -> dict:
    """Architecture facts read from the weights alone: model name, z_dim and channel count.

    Works for the reference's checkpoints too, which carry no config.
    """
    model = "B" if "encoder.13.weight" in state_dict else "H"
    last = "encoder.13.weight" if model == "B" else "encoder.11.weight"
    try:
        return {
            "model": model,
            "z_dim": state_dict[last].shape[0] // 2,
            "nc": state_dict["encoder.0.weight"].shape[1],
        }
    except (KeyError, AttributeError, IndexError) as err:
        raise CheckpointError(f"the weights are not those of a β-VAE H or B model (no usable {err})") from None


def checkpoint_architecture(checkpoint: dict) -> dict:
    """The ARCHITECTURE_KEYS of a checkpoint, from its config where present, else from its weights."""
    facts = describe_weights(checkpoint["model_states"]["net"])
    config = checkpoint.get("config") or {}
    if "objective" in config:
        facts["objective"] = config["objective"]
    return facts


def check_compatible(checkpoint: dict, config: dict, path: Path) -> None:
    """Refuse to resume a checkpoint whose architecture or objective differs from the flags."""
    try:
        found = checkpoint_architecture(checkpoint)
    except CheckpointError as err:
        raise CheckpointError(f"{path} cannot be resumed: {err}. {_START_FRESH}") from None
    differences = [f"{flag}: the checkpoint has {found[key]!r}, the flags give {config[key]!r}"
                   for key, flag in ARCHITECTURE_KEYS.items() if key in found and found[key] != config[key]]
    if differences:
        raise CheckpointError(
            f"{path} does not match this run ({'; '.join(differences)}). "
            "To continue that run, use the flags it was trained with. " + _START_FRESH
        )


def restore(checkpoint: dict, path: Path, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load a compatible checkpoint's weights, optimizer state (when given one) and RNG states."""
    try:
        model.load_state_dict(checkpoint["model_states"]["net"])
        if optimizer is not None:
            if "optim" not in checkpoint.get("optim_states", {}):
                raise KeyError("optim_states.optim")
            optimizer.load_state_dict(checkpoint["optim_states"]["optim"])
        restore_rng(checkpoint)
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} cannot be resumed: its contents do not fit this run ({reason}). "
                              f"{_START_FRESH}") from None


def model_from_checkpoint(checkpoint: dict) -> BetaVAE:
    """Rebuild the trained model from a checkpoint alone."""
    facts = describe_weights(checkpoint["model_states"]["net"])
    if facts["model"] not in MODELS:
        raise CheckpointError(f"unknown model {facts['model']!r} in checkpoint")
    model = build_model(facts["model"], facts["z_dim"], facts["nc"])
    model.load_state_dict(checkpoint["model_states"]["net"])
    return model


def restore_rng(checkpoint: dict) -> None:
    """Put the torch RNGs back where the checkpoint left them (absent in reference checkpoints)."""
    rng = checkpoint.get("rng") or {}
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
