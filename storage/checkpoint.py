"""Checkpoints: plain save/load functions, atomic writes, safe and fully validated loading.

A checkpoint holds what the reference's loader reads (`iter`, `model_states.net`,
`optim_states.optim`) plus, for methods with more networks, their other networks and optimisers
under their own keys (`model_states.discriminator`, ...), the run's config and RNG states, so it
alone can rebuild its method and resume a run exactly. Loading uses
`torch.load(weights_only=True)`: tensors and plain containers only, so a checkpoint from a
stranger cannot run code. Before anything is loaded into a network or an optimiser, every field
the run reads is checked for its type and every tensor for its shape (`validate`), so a damaged or
foreign file is a CheckpointError naming the file and the field, never a crash inside torch.
"""

import io
import math
import os
import pickle
import re
import stat
from pathlib import Path

import torch

from utils import atomic_write

# The config entries that must agree between a checkpoint and the flags to resume it, as the user knows them.
ARCHITECTURE_KEYS = {"model": "--model", "z_dim": "--z_dim", "nc": "image channels (--dataset, --channels)",
                     "objective": "--objective", "noise_dim": "--noise_dim (InfoGAN)"}
START_FRESH = ("To start fresh instead, pass a new --viz_name, or a --ckpt_name naming a file that does not "
               "exist yet; the files already there are left untouched.")


class CheckpointError(Exception):
    """A checkpoint that cannot be written, read or resumed; the message says what to do."""


def save_checkpoint(path: Path, step: int, method, config: dict, extra: dict | None = None) -> None:
    """Write the checkpoint atomically: `path` holds the old or the new one, never half of one."""
    state = {
        "iter": step,
        "model_states": {name: net.state_dict() for name, net in method.networks.items()},
        "optim_states": {name: opt.state_dict() for name, opt in method.optimizers.items()},
        "config": dict(config),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        **(extra or {}),
    }
    method_state = method.extra_state()
    if method_state:
        state["method_state"] = method_state
    buffer = io.BytesIO()  # serialise first, so a failure here never touches the disk
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint onto the CPU (a GPU checkpoint opens on a CPU-only machine).

    Raises CheckpointError, never anything else, for a file that is unsafe, damaged, not a regular
    file or not a checkpoint.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read ({err}). {START_FRESH}") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path} is not a regular file (a folder, pipe or device), so it is not read as a "
                              f"checkpoint. {START_FRESH}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(err), re.IGNORECASE)
        if unsafe:
            raise CheckpointError(
                f"{path} was refused: it asks the loader to import {unsafe.group(1)}, and code named by a file "
                "could do anything. A checkpoint of this project holds only tensors and plain containers, so "
                f"nothing in this one was loaded or run. {START_FRESH}"
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint: it is damaged or not a PyTorch file. "
                              f"{START_FRESH}") from None
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read ({err}). {START_FRESH}") from None
    except Exception as err:  # torch.load fails on a damaged file in many ways (zip, pickle, storage errors)
        reason = f"{type(err).__name__}: {str(err).splitlines()[0]}" if str(err) else type(err).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint: it is damaged or not a PyTorch file "
                              f"({reason}). {START_FRESH}") from None
    states = checkpoint.get("model_states") if isinstance(checkpoint, dict) else None
    net = states.get("net") if isinstance(states, dict) else None
    if not isinstance(net, dict) or not isinstance(checkpoint.get("iter"), int):
        raise CheckpointError(f"{path} is not a β-VAE checkpoint (it lacks `iter` or `model_states.net`). "
                              f"{START_FRESH}")
    return checkpoint


# --------------------------------------------------------------------------- validation


class _Invalid(Exception):
    """One field of a checkpoint that is not what the run reads: (field, what is wrong)."""


def _expect(condition: bool, field: str, problem: str) -> None:
    if not condition:
        raise _Invalid(field, problem)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_network(saved, net: torch.nn.Module, field: str) -> None:
    _expect(isinstance(saved, dict), field, f"is a {type(saved).__name__}, not a dict of tensors")
    wanted = net.state_dict()
    missing, unexpected = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
    _expect(not missing, field, f"lacks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    _expect(not unexpected, field, f"has unexpected {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}")
    for key, tensor in wanted.items():
        got = saved[key]
        _expect(isinstance(got, torch.Tensor), f"{field}.{key}", f"is a {type(got).__name__}, not a tensor")
        _expect(got.shape == tensor.shape, f"{field}.{key}",
                f"has shape {tuple(got.shape)}, the model needs {tuple(tensor.shape)}")
        _expect(got.dtype.is_floating_point == tensor.dtype.is_floating_point, f"{field}.{key}",
                f"has dtype {got.dtype}, the model needs {tensor.dtype}")


def _check_optimizer(saved, optimizer: torch.optim.Optimizer, field: str) -> None:
    """Adam's state must fit the parameters it updates: a wrong-shaped moment crashes the fused step."""
    _expect(isinstance(saved, dict), field, f"is a {type(saved).__name__}, not an optimizer state")
    groups, state = saved.get("param_groups"), saved.get("state")
    _expect(isinstance(groups, list), f"{field}.param_groups", "is missing or not a list")
    _expect(isinstance(state, dict), f"{field}.state", "is missing or not a dict")
    _expect(len(groups) == len(optimizer.param_groups), f"{field}.param_groups",
            f"has {len(groups)} groups, the optimizer has {len(optimizer.param_groups)}")
    for g, (got, ours) in enumerate(zip(groups, optimizer.param_groups, strict=True)):
        where = f"{field}.param_groups[{g}]"
        _expect(isinstance(got, dict) and isinstance(got.get("params"), list), where, "has no list of params")
        _expect(len(got["params"]) == len(ours["params"]), where,
                f"updates {len(got['params'])} tensors, the model has {len(ours['params'])}")
        for key in ("lr", "eps", "weight_decay"):
            value = got.get(key, ours.get(key))
            _expect(isinstance(value, float | int) and math.isfinite(value), f"{where}.{key}",
                    f"is {value!r}, not a finite number")
        betas = got.get("betas", ours.get("betas"))
        _expect(isinstance(betas, tuple | list) and len(betas) == 2 and all(isinstance(b, float | int) for b in betas),
                f"{where}.betas", f"is {betas!r}, not two numbers")
        for key, param in zip(got["params"], ours["params"], strict=True):
            if key not in state:
                continue  # a parameter not updated yet has no state
            moments, at = state[key], f"{field}.state[{key}]"
            _expect(isinstance(moments, dict), at, "is not a dict")
            step = moments.get("step")
            _expect(isinstance(step, torch.Tensor | int | float) and not isinstance(step, bool), f"{at}.step",
                    f"is {type(step).__name__}, not a number")
            if isinstance(step, torch.Tensor):
                _expect(step.numel() == 1, f"{at}.step", f"has {step.numel()} values, not one")
            for name in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if got.get("amsgrad") else ()):
                moment = moments.get(name)
                _expect(isinstance(moment, torch.Tensor), f"{at}.{name}", "is missing or not a tensor")
                _expect(moment.shape == param.shape, f"{at}.{name}",
                        f"has shape {tuple(moment.shape)}, its parameter has {tuple(param.shape)}")
                _expect(moment.dtype.is_floating_point, f"{at}.{name}", f"has dtype {moment.dtype}")


def _check_extras(checkpoint: dict, stat_sizes: dict | None) -> None:
    """The fields beyond weights that a resumed run reads: config, RNG, gathered sums, last record."""
    config = checkpoint.get("config")
    _expect(config is None or isinstance(config, dict), "config", f"is a {type(config).__name__}, not a dict")
    rng = checkpoint.get("rng")
    if rng is not None:
        _expect(isinstance(rng, dict), "rng", f"is a {type(rng).__name__}, not a dict")
        cpu = rng.get("torch")
        if cpu is not None:
            reference = torch.get_rng_state()
            _expect(isinstance(cpu, torch.Tensor) and cpu.dtype == torch.uint8 and cpu.shape == reference.shape,
                    "rng.torch", f"is not a torch RNG state (a uint8 tensor of {reference.numel()} bytes)")
        cuda = rng.get("cuda", [])
        _expect(isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda),
                "rng.cuda", "is not a list of CUDA RNG states")
    gather = checkpoint.get("gather")
    if gather:
        _expect(isinstance(gather, dict), "gather", f"is a {type(gather).__name__}, not a dict")
        sums, count = gather.get("sums"), gather.get("count")
        _expect(isinstance(sums, torch.Tensor) and sums.dim() == 1, "gather.sums", "is not a vector")
        if stat_sizes is not None:
            width = sum(stat_sizes.values())
            _expect(sums.numel() == width, "gather.sums", f"has {sums.numel()} values, this method gathers {width}")
        _expect(_is_count(count), "gather.count", f"is {count!r}, not a count")
    record = checkpoint.get("last_record")
    _expect(record is None or isinstance(record, dict), "last_record", f"is a {type(record).__name__}, not a dict")
    method_state = checkpoint.get("method_state", {})
    _expect(isinstance(method_state, dict), "method_state", f"is a {type(method_state).__name__}, not a dict")


def validate_config(checkpoint: dict, path: Path) -> None:
    """The config alone (read first, to compare flags): a dict, or absent in reference checkpoints."""
    config = checkpoint.get("config")
    if config is not None and not isinstance(config, dict):
        raise CheckpointError(f"{path} cannot be used: its field config is a {type(config).__name__}, not a dict. "
                              f"The file is left as it is. {START_FRESH}")


def validate(checkpoint: dict, path: Path, method, with_optimizers: bool = True) -> None:
    """Check every field a run reads against `method` before anything is loaded; CheckpointError if off."""
    try:
        _expect(_is_count(checkpoint.get("iter")), "iter", f"is {checkpoint.get('iter')!r}, not an iteration count")
        model_states = checkpoint.get("model_states")
        _expect(isinstance(model_states, dict), "model_states", "is missing or not a dict")
        for name, net in method.networks.items():
            _expect(name in model_states, f"model_states.{name}", "is missing")
            _check_network(model_states[name], net, f"model_states.{name}")
        if with_optimizers:
            optim_states = checkpoint.get("optim_states")
            _expect(isinstance(optim_states, dict), "optim_states", "is missing or not a dict")
            for name, optimizer in method.optimizers.items():
                _expect(name in optim_states, f"optim_states.{name}", "is missing")
                _check_optimizer(optim_states[name], optimizer, f"optim_states.{name}")
        _check_extras(checkpoint, method.stat_sizes() if with_optimizers else None)
    except _Invalid as invalid:
        field, problem = invalid.args
        raise CheckpointError(f"{path} cannot be used: its field {field} {problem}. The file is left as it is. "
                              f"{START_FRESH}") from None


def restore(checkpoint: dict, path: Path, method, with_optimizers: bool = True) -> None:
    """Load a validated, compatible checkpoint's networks, optimizer states (when asked) and RNG states."""
    validate(checkpoint, path, method, with_optimizers)
    try:
        for name, net in method.networks.items():
            net.load_state_dict(checkpoint["model_states"][name])
        if with_optimizers:
            for name, optimizer in method.optimizers.items():
                load_optimizer(optimizer, checkpoint["optim_states"][name])
            restore_rng(checkpoint)
        method.load_extra_state(checkpoint.get("method_state", {}))
    except (KeyError, RuntimeError, ValueError, TypeError) as err:  # what validation cannot foresee
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} cannot be resumed: its contents do not fit this run ({reason}). "
                              f"{START_FRESH}") from None


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load an optimiser's moments and step counts, keeping the lr and betas it was built with from this run's
    flags: a saved state would bring back the checkpoint's, and silently undo a --lr given on resume
    (resume.py lets such a change through only with --resume_with_changes True)."""
    in_effect = [{key: group[key] for key in ("lr", "betas")} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, hyperparameters in zip(optimizer.param_groups, in_effect, strict=True):
        group.update(hyperparameters)


def restore_rng(checkpoint: dict) -> None:
    """Put the torch RNGs back where the checkpoint left them (absent in reference checkpoints)."""
    rng = checkpoint.get("rng") or {}
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


# --------------------------------------------------------------------------- what a checkpoint is


def describe_weights(state_dict: dict) -> dict:
    """Architecture facts read from a β-VAE's weights alone: model name, z_dim and channel count.

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
    """The ARCHITECTURE_KEYS of a checkpoint: from its config where it has one, else from its weights."""
    config = checkpoint.get("config") or {}
    if all(key in config for key in ("model", "z_dim", "nc", "objective")):  # older configs lack noise_dim
        return {key: config[key] for key in ARCHITECTURE_KEYS if key in config}
    facts = describe_weights(checkpoint["model_states"]["net"])
    if "objective" in config:
        facts["objective"] = config["objective"]
    return facts


def check_compatible(checkpoint: dict, config: dict, path: Path) -> None:
    """Refuse to resume a checkpoint whose architecture or method differs from the flags."""
    try:
        found = checkpoint_architecture(checkpoint)
    except CheckpointError as err:
        raise CheckpointError(f"{path} cannot be resumed: {err}. {START_FRESH}") from None
    differences = [f"{flag}: the checkpoint has {found[key]!r}, the flags give {config[key]!r}"
                   for key, flag in ARCHITECTURE_KEYS.items() if key in found and found[key] != config[key]]
    if differences:
        raise CheckpointError(
            f"{path} does not match this run ({'; '.join(differences)}). "
            "To continue that run, use the flags it was trained with. " + START_FRESH
        )
