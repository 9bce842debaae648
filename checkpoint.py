"""Checkpoints: plain save/load functions, atomic writes, safe loading.

A checkpoint holds what the reference's loader reads (`iter`,
`model_states.net`, `optim_states.optim`) plus the run's config and RNG states,
so it alone can rebuild its model and resume a run exactly. Loading uses
`torch.load(weights_only=True)`: tensors and plain containers only, so a
checkpoint from a stranger cannot run code.
"""

import io
import pickle
from pathlib import Path

import torch

from model import MODELS, BetaVAE, build_model
from utils import atomic_write

# The config entries that must agree between a checkpoint and the flags to resume it.
ARCHITECTURE_KEYS = ("model", "z_dim", "nc", "objective")


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
    """Read a checkpoint onto the CPU (a GPU checkpoint opens on a CPU-only machine)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} was refused: it holds Python objects other than tensors and plain containers, "
            f"which could run code when loaded ({str(err).splitlines()[0]}). Only load checkpoints you trust "
            "with other tools; this one was not loaded."
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint ({err}).") from err
    if not isinstance(checkpoint, dict) or "model_states" not in checkpoint:
        raise CheckpointError(f"{path} is not a β-VAE checkpoint (no model_states).")
    return checkpoint


def describe_weights(state_dict: dict) -> dict:
    """Architecture facts read from the weights alone: model name, z_dim and channel count.

    Works for the reference's checkpoints too, which carry no config.
    """
    model = "B" if "encoder.13.weight" in state_dict else "H"
    last = "encoder.13.weight" if model == "B" else "encoder.11.weight"
    return {
        "model": model,
        "z_dim": state_dict[last].shape[0] // 2,
        "nc": state_dict["encoder.0.weight"].shape[1],
    }


def checkpoint_architecture(checkpoint: dict) -> dict:
    """The ARCHITECTURE_KEYS of a checkpoint, from its config where present, else from its weights."""
    facts = describe_weights(checkpoint["model_states"]["net"])
    config = checkpoint.get("config") or {}
    if "objective" in config:
        facts["objective"] = config["objective"]
    return facts


def check_compatible(checkpoint: dict, config: dict, path: Path) -> None:
    """Refuse to resume a checkpoint whose architecture or objective differs from the flags."""
    found = checkpoint_architecture(checkpoint)
    differences = [f"{key}: checkpoint {found[key]!r}, flags {config[key]!r}"
                   for key in ARCHITECTURE_KEYS if key in found and found[key] != config[key]]
    if differences:
        raise CheckpointError(
            f"{path} does not match this run ({'; '.join(differences)}). "
            "To start fresh, pass a new --viz_name (or --ckpt_name naming a file that does not exist); "
            "to continue that run, use the flags it was trained with."
        )


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
