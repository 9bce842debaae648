"""Result cards: a trained run, shipped in pretrained/<name>/ with what it shows and how it was made.

    python -m results.card dsprites_B --command "sh scripts/run_dsprites_B.sh --max_iter 3e5 ..."

reads the run's checkpoint (checkpoints/<name>/last) and outputs (outputs/<name>/) and writes
pretrained/<name>/:

- `last`: the checkpoint, optimiser state included, so the command resumes or fine-tunes it
  (`--ckpt_dir pretrained`);
- `README.md`: the card: command, seed, iterations, training wall time, machine, precision, the
  full-protocol scores and latent report (when the run has been scored at scale 1), the pictures
  and the curves;
- the traversal GIFs and reconstructions of the last display step, the training and score curves
  (PNG), metrics.jsonl and the evaluation files;
- `card.json`: the same facts for programs, with scores at a small evaluation scale that
  tests/test_pretrained.py recomputes from the shipped checkpoint.

A run that has not finished gets an "in progress" card: where it stands and how to continue it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

CHECK_SCALE = 0.02  # the small evaluation scale the card stores and the test recomputes (seconds, not minutes)
CHECK_SEED = 0
PICTURES = ("reconstruction.png", "traverse_fixed_square.gif", "traverse_fixed_ellipse.gif", "traverse_fixed_heart.gif",
            "traverse_random_img.gif")
SCORES = (("beta_vae", "BetaVAE"), ("factor_vae", "FactorVAE"), ("mig", "MIG"), ("dci_disentanglement", "DCI"),
          ("sap", "SAP"))


def check_scores(checkpoint: Path, dset_dir: str, scale: float = CHECK_SCALE, seed: int = CHECK_SEED) -> dict:
    """The headline scores of a checkpoint at a small scale, in fp32 (the same numbers on every CPU kind, up to
    the last bits of the codes), written to a temporary folder."""
    import torch

    from dataset import dataset_spec, load_dataset
    from evaluation.evaluate import evaluate
    from storage.checkpoint import load_checkpoint
    from storage.resume import method_from_checkpoint

    config = load_checkpoint(checkpoint)["config"]
    method = method_from_checkpoint(checkpoint)
    spec = dataset_spec(argparse.Namespace(**{**config, "subset": None}))
    data = load_dataset(spec, dset_dir)
    with tempfile.TemporaryDirectory() as out:
        result = evaluate(method.encoder, data, torch.device("cpu"), 0, Path(out), seed=seed, scale=scale,
                          autocast_dtype=None, progress=False)
    return {key: float(value) for key, value in result["summary"].items()}


def latest_eval(run_dir: Path, scale: float = 1.0) -> Path | None:
    """The run's latest eval_<iter>.json at `scale` (1: the full protocol), from training or from_checkpoint/."""
    suffix = "" if scale == 1.0 else f"_scale{scale:g}"
    found = []
    for folder in (run_dir, run_dir / "from_checkpoint"):
        for path in folder.glob(f"eval_*{suffix}.json"):
            stem = path.stem.removeprefix("eval_").removesuffix(suffix)
            if stem.isdigit():
                found.append((int(stem), path))
    return max(found)[1] if found else None


def _hours(seconds: float | None) -> str:
    if not seconds:
        return "not recorded"
    return f"{seconds / 3600:.1f} h ({seconds:,.0f} s)"


def _score_table(summary: dict) -> list[str]:
    rows = ["| score | value |", "|---|---|"]
    rows += [f"| {label} | {summary[key]:.3f} |" for key, label in SCORES if key in summary]
    return rows


def card_text(facts: dict, full_txt: str | None, curves: list[str], pictures: list[str]) -> str:
    status = ("finished" if facts["finished"] else
              f"**in progress**: iteration {facts['iter']:,} of {facts['max_iter']:,}")
    lines = [f"# {facts['name']}: {facts['title']}", "", f"Status: {status}.", "",
             "| | |", "|---|---|",
             f"| command | `{facts['command']}` |",
             f"| seed | {facts['seed']} |",
             f"| iterations | {facts['iter']:,} |",
             f"| training wall time | {_hours(facts['train_seconds'])}{facts.get('time_note', '')} |",
             f"| machine | {facts['machine']} |",
             f"| precision | {facts['precision']} |",
             f"| checkpoint | `last`, {facts['checkpoint_mib']:.1f} MiB, with the optimiser state |", ""]
    name = facts["name"]
    lines += [f"Show it on your machine (traversals, reconstructions and scores, into "
              f"`outputs/{name}/from_checkpoint/`):", "", f"    {facts['show']}", "",
              "Continue or fine-tune it exactly where it stopped (the log too, so the curves go on):", "",
              f"    mkdir -p checkpoints/{name} outputs/{name}",
              f"    cp pretrained/{name}/last checkpoints/{name}/last",
              f"    cp pretrained/{name}/metrics.jsonl outputs/{name}/metrics.jsonl",
              f"    {facts['command']}", ""]
    if full_txt:
        lines += ["## Scores and latent report (full protocol)", "", *_score_table(facts["full"]), "",
                  "```text", full_txt.strip(), "```", ""]
    elif facts.get("latest"):
        lines += [f"## Latest scores (iteration {facts['latest']['iter']:,}, --eval_scale "
                  f"{facts['latest']['scale']:g}: not comparable with published numbers)", "",
                  *_score_table(facts["latest"]["summary"]), ""]
        if facts["latest"].get("text"):  # its latent report: which factor each active latent follows
            lines += ["```text", facts["latest"]["text"].strip(), "```", ""]
    if facts.get("observations"):
        lines += ["## Observations", "", facts["observations"].strip(), ""]
    if pictures:
        lines += ["## Traversals and reconstructions", ""]
        lines += [f"![{name}]({name})" for name in pictures] + [""]
    if curves:
        lines += ["## Curves", ""] + [f"![{Path(name).stem}]({name})" for name in curves] + [""]
    lines += [f"`card.json` holds these facts and the scores at `--eval_scale {CHECK_SCALE:g}` (seed "
              f"{CHECK_SEED}, fp32) that `tests/test_pretrained.py` recomputes from `last`."]
    return "\n".join(lines) + "\n"


def build(name: str, command: str, show: str, title: str, ckpt_dir: Path, output_dir: Path, dest: Path,
          dset_dir: str, extra_seconds: float = 0.0, check: bool = True, observations: str = "") -> Path:
    from storage.checkpoint import load_checkpoint
    from utils import atomic_write

    checkpoint_path, run_dir, folder = ckpt_dir / name / "last", output_dir / name, dest / name
    checkpoint = load_checkpoint(checkpoint_path)
    config = checkpoint["config"]
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint_path, folder / "last")
    machine = config.get("machine") or {}
    facts = {
        "name": name, "title": title, "command": command, "show": show, "seed": config["seed"],
        "iter": int(checkpoint["iter"]), "max_iter": int(config["max_iter"]),
        "finished": int(checkpoint["iter"]) >= int(config["max_iter"]),
        "train_seconds": float(checkpoint.get("train_seconds", 0.0)) + extra_seconds,
        "machine": (f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['torch_threads']} torch "
                    f"threads, torch {machine['torch']} (the latest session)") if machine else
                   "not recorded (a session before checkpoints recorded it)",
        "precision": f"{config.get('precision_used')} ({config.get('precision_reason')})",
        "checkpoint_mib": (folder / "last").stat().st_size / 2**20,
        "observations": observations,
    }
    if extra_seconds:
        facts["time_note"] = f", of which {extra_seconds:,.0f} s from a session before train_seconds was recorded"
    full, full_txt = latest_eval(run_dir), None
    if full is not None:
        result = json.loads(full.read_text())
        facts["full"] = result["summary"]
        facts["full_iter"] = result["iter"]
        full_txt = full.with_suffix(".txt").read_text() if full.with_suffix(".txt").exists() else None
        for path in full.parent.glob(f"{full.stem}*"):
            shutil.copyfile(path, folder / path.name)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (run_dir / "metrics.jsonl").exists() else []
    evals = [r for r in records if "eval" in r]
    if evals:
        facts["latest"] = {"iter": evals[-1]["iter"], "scale": config.get("eval_scale", 1.0),
                           "summary": evals[-1]["eval"]}
        scaled = latest_eval(run_dir, facts["latest"]["scale"])
        if scaled is not None and scaled.with_suffix(".txt").exists():
            facts["latest"]["text"] = scaled.with_suffix(".txt").read_text()
    if (run_dir / "metrics.jsonl").exists():
        shutil.copyfile(run_dir / "metrics.jsonl", folder / "metrics.jsonl")
    pictures = _copy_pictures(run_dir, folder)
    curves = _draw_curves(folder)
    if check:
        facts["check"] = {"scale": CHECK_SCALE, "eval_seed": CHECK_SEED, "precision": "fp32",
                          "summary": check_scores(folder / "last", dset_dir)}
    atomic_write(folder / "card.json", lambda f: f.write(json.dumps(facts, indent=1).encode()))
    atomic_write(folder / "README.md", lambda f: f.write(card_text(facts, full_txt, curves, pictures).encode()))
    return folder


def _copy_pictures(run_dir: Path, folder: Path) -> list[str]:
    """The last display step's reconstructions and traversals."""
    steps = sorted((int(p.name), p) for p in run_dir.iterdir() if p.is_dir() and p.name.isdigit()) \
        if run_dir.is_dir() else []
    if not steps:
        return []
    copied = []
    for name in PICTURES:
        if (steps[-1][1] / name).exists():
            shutil.copyfile(steps[-1][1] / name, folder / name)
            copied.append(name)
    return copied


def _draw_curves(folder: Path) -> list[str]:
    """The training curves and the score curve from the shipped metrics.jsonl."""
    if not (folder / "metrics.jsonl").exists():
        return []
    from monitoring.plots import save_curves

    paths = save_curves(folder / "metrics.jsonl", folder / "curves")
    return [f"curves/{Path(p).name}" for p in sorted(paths)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Ship a trained run in pretrained/<name>/ with its result card.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("name", help="the run's --viz_name")
    p.add_argument("--command", required=True, help="the exact command that trained it")
    p.add_argument("--show", default=None, help="the command that shows it from pretrained/ (default: --command "
                   "with --train False --eval_metrics True --ckpt_dir pretrained)")
    p.add_argument("--title", default="", help="one line: what the model is")
    p.add_argument("--ckpt_dir", type=Path, default=Path("checkpoints"))
    p.add_argument("--output_dir", type=Path, default=Path("outputs"))
    p.add_argument("--dest", type=Path, default=Path("pretrained"))
    p.add_argument("--dset_dir", default="data")
    p.add_argument("--extra_seconds", type=float, default=0.0,
                   help="training time of sessions that did not record train_seconds")
    p.add_argument("--no_check", action="store_true", help="skip the small-scale scores (in-progress cards)")
    p.add_argument("--observations", type=Path, default=None,
                   help="a Markdown file: what was seen of the run (a missed target, and why), shown on the card")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    show = args.show or f"{args.command} --train False --eval_metrics True --ckpt_dir pretrained"
    observations = args.observations.read_text() if args.observations else ""
    folder = build(args.name, args.command, show, args.title, args.ckpt_dir, args.output_dir, args.dest,
                   args.dset_dir, args.extra_seconds, check=not args.no_check, observations=observations)
    print(f"wrote {folder}/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
