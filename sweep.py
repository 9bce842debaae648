"""Studies: sweeps over methods, hyperparameters and seeds, run on Ray, ending in tables and plots.

    python sweep.py studies/higgins2017_fig6.yaml --scale cpu      # a few minutes on 2 cores
    python sweep.py studies/locatello2019_dsprites.yaml --address auto --gpus_per_trial 0.25

A study file (format: docs/studies.md) names a dataset, methods with hyperparameter grids, seeds,
iterations, evaluation settings and scales. Every trial is one call of the training entry point,
`main.main(argv)`, in-process in a Ray worker, with its own run folder under `sweeps/<study>/<trial>/`.
Ray schedules the trials on the cores (or GPU fractions) it has and retries a trial whose process
dies; the retry resumes from the trial's `last` checkpoint. A trial that finished leaves
`result.json`, so running the same command again skips it. study_report.py turns the folder into
results.csv, report.md and plots.
"""

import argparse
import contextlib
import difflib
import io
import itertools
import json
import logging
import os
import re
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import study_report
from utils import atomic_write

ROOT = Path(__file__).resolve().parent

# Flags that every trial gets from the sweep itself; a study file cannot set them (the key to use instead).
RESERVED = {
    "objective": "the method entry's `method`", "seed": "`seeds`", "max_iter": "`max_iter`",
    "dataset": "`dataset`", "dset_dir": "sweep.py --dset_dir", "eval_metrics": "nothing (always True)",
    "ckpt_dir": "nothing (each trial has its own folder)", "output_dir": "nothing (each trial has its own folder)",
    "viz_name": "nothing (the trial's name)", "viz_on": "nothing (trials never stream to visdom)",
    "cuda": "sweep.py --gpus_per_trial", "train": "nothing (trials train)", "ckpt_name": "nothing (always `last`)",
}
STUDY_KEYS = {"name", "description", "source", "dataset", "seeds", "max_iter", "evaluation", "flags", "methods",
              "scales", "report"}
METHOD_KEYS = {"method", "label", "grid", "flags", "published"}
SCALE_KEYS = {"description", "seeds", "max_iter", "evaluation", "flags", "methods"}
SCALE_METHOD_KEYS = {"grid", "flags"}
REPORT_KEYS = {"metric", "published_source"}
FULL_SCALE = "full"
TRIAL_LOG = "train.log"
# A trial's progress bar, written into its log: one update every this many seconds, not ten a second.
TRIAL_TQDM_MININTERVAL = "30"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in Ray's error text


class StudyError(Exception):
    """A study file that cannot be run; the message names the file, the line and what to do."""


class TrialInterrupted(Exception):
    """main.py stopped on SIGINT/SIGTERM after saving a checkpoint (a preempted or drained node):
    Ray retries the trial, which resumes. A trial the sweep itself cancelled (Ctrl-C) is not retried."""


# --------------------------------------------------------------------------- reading YAML with line numbers


class _Map(dict):
    """A YAML mapping that remembers its own line and each key's line (1-based)."""

    line = 0

    def __init__(self, *args):
        super().__init__(*args)
        self.lines: dict = {}


class _Seq(list):
    """A YAML sequence that remembers its own line and each item's line."""

    line = 0

    def __init__(self, *args):
        super().__init__(*args)
        self.lines: list[int] = []


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that keeps line numbers and refuses duplicate keys (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise StudyError(f"{node.start_mark.name}:{line}: keys must be names, got {key!r}")
        if key in result:
            raise StudyError(f"{node.start_mark.name}:{line}: key {key!r} appears twice in this mapping "
                             f"(first on line {result.lines[key]}); keep one")
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = line
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    result = _Seq(loader.construct_object(item, deep=True) for item in node.value)
    result.line = node.start_mark.line + 1
    result.lines = [item.start_mark.line + 1 for item in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def read_yaml(path: Path) -> _Map:
    try:
        with open(path, encoding="utf-8") as f:
            document = yaml.load(f, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except FileNotFoundError:
        raise StudyError(f"{path}: no such study file; the shipped ones are in {ROOT / 'studies'}") from None
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(document, _Map):
        raise StudyError(f"{path}: a study file is a mapping (name:, dataset:, methods:, ...); see docs/studies.md")
    return document


# --------------------------------------------------------------------------- the study, expanded into trials


@dataclass
class Trial:
    """One training run: a method at one point of its grid, with one seed."""

    name: str  # stable and readable: the folder and --viz_name, e.g. betavae_beta4_seed0
    label: str  # the method entry's label, e.g. betavae
    method: str  # main.py --objective, as main.py spells it
    params: dict  # the grid point (flag -> value), in the order of the study file
    seed: int
    flags: dict  # every flag of the run except folders and the device (flag -> argv string)
    line: int  # the method entry's line in the study file
    selected: bool = True  # False: planned and reported, but left out of this run by --only


@dataclass
class Study:
    path: Path
    name: str
    scale: str
    folder_name: str  # name for the full scale, name_<scale> for the others
    dataset: str
    description: str
    source: str
    max_iter: int
    seeds: list[int]
    methods: list[dict]  # label, method, line, published
    trials: list[Trial] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    scales: list[str] = field(default_factory=list)


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}"


def _check_keys(path: Path, mapping: _Map, allowed: set[str], what: str) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise StudyError(f"{_where(path, mapping.lines[key])}: unknown key {key!r} in {what}{hint} "
                             f"Allowed: {', '.join(sorted(allowed))}.")


def _expect(path: Path, value, kind, line: int, what: str):
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {dict: "a mapping", list: "a list", str: "a string", int: "a whole number"}
        raise StudyError(f"{_where(path, line)}: {what} must be {names.get(kind, kind)}, got {value!r}")
    return value


def format_value(value) -> str:
    """A YAML scalar as main.py's argv spells it (1.0 -> '1', True -> 'True', '1e-4' stays)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def _name_part(value) -> str:
    """A value as it appears in a trial name: readable, and safe as a folder name."""
    return re.sub(r"[^A-Za-z0-9.+-]", "-", format_value(value))


class FlagTable:
    """main.py's flags, read from main.build_parser() at run time, so new methods and flags work at once."""

    def __init__(self):
        import main  # the training entry point; its parser is the one source of flag names and methods

        self.main = main
        parser = main.build_parser()
        self.actions = {a.dest: a for a in parser._actions if a.option_strings}
        self.group_of = {a.dest: group.title for group in parser._action_groups for a in group._group_actions}
        self.methods = list(self.actions["objective"].choices)
        self.datasets = list(self.actions["dataset"].choices)

    def method(self, name) -> str | None:
        """main.py's spelling of a method name given in any case, or None."""
        lowered = str(name).lower()
        return next((m for m in self.methods if str(m).lower() == lowered), None)

    def check_flag(self, path: Path, key: str, line: int, where: str, known: bool = True) -> None:
        """A study key must be a flag of main.py that the sweep does not set itself. known=False skips the
        first half: for entries left out by --only, whose method (and its flags) may not be in main.py yet."""
        if key in RESERVED:
            raise StudyError(f"{_where(path, line)}: {key!r} in {where} is set by the sweep; use {RESERVED[key]}")
        if known and key not in self.actions:
            close = difflib.get_close_matches(key, sorted(self.actions), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise StudyError(f"{_where(path, line)}: unknown key {key!r} in {where}: not a flag of main.py{hint} "
                             "(keys are main.py flag names without the dashes; `python main.py --help` lists them)")

    def parse(self, argv: list[str]) -> tuple[argparse.Namespace | None, str]:
        """main.parse_args(argv) without exiting: (args, '') or (None, argparse's message)."""
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                return self.main.parse_args(argv), ""
        except SystemExit:
            lines = [line for line in err.getvalue().splitlines() if "error:" in line]
            return None, (lines[-1].split("error:", 1)[1].strip() if lines else err.getvalue().strip())


def _flag_map(path: Path, table: FlagTable, mapping, line: int, where: str, group: str | None = None,
              known: bool = True) -> _Map:
    """Check a mapping of main.py flags (scalars only) and return it."""
    if mapping is None:
        return _Map()
    mapping = _expect(path, mapping, dict, line, where)
    for key, value in mapping.items():
        table.check_flag(path, key, mapping.lines[key], where, known)
        if group and table.group_of.get(key) != group:
            raise StudyError(f"{_where(path, mapping.lines[key])}: {key!r} is not an {group} flag of main.py; "
                             f"put it under `flags:` instead")
        if isinstance(value, (dict, list)) or value is None:
            raise StudyError(f"{_where(path, mapping.lines[key])}: {where}.{key} must be a single value, "
                             f"got {value!r}")
    return mapping


def _grid_points(path: Path, table: FlagTable, grid, line: int, where: str,
                 known: bool = True) -> list[tuple[dict, dict]]:
    """A grid -> [(point, lines)]. A mapping is the product of its lists (a scalar is a list of one);
    a list of mappings is the union of their products (for values that move together, such as
    DIP-VAE's lambda_od and lambda_d)."""
    if grid is None:
        return [({}, {})]
    parts = grid if isinstance(grid, list) else [grid]
    part_lines = grid.lines if isinstance(grid, _Seq) else [line]
    points = []
    for part, part_line in zip(parts, part_lines, strict=True):
        part = _expect(path, part, dict, part_line, f"{where} (a mapping of flag: value or [values])")
        axes = []
        for key, values in part.items():
            table.check_flag(path, key, part.lines[key], where, known)
            values = values if isinstance(values, list) else [values]
            if not values:
                raise StudyError(f"{_where(path, part.lines[key])}: {where}.{key} is an empty list; give at least "
                                 "one value")
            for value in values:
                if isinstance(value, (dict, list)) or value is None:
                    raise StudyError(f"{_where(path, part.lines[key])}: {where}.{key}: each value must be a "
                                     f"number, a string or a boolean, got {value!r}")
            axes.append([(key, value, part.lines[key]) for value in values])
        for combo in itertools.product(*axes):
            points.append(({k: v for k, v, _ in combo}, {k: ln for k, _, ln in combo}))
    return points


def _published(path: Path, value, line: int) -> dict:
    """published: {metric: "99.23 ± 0.1 %"} -> {metric: {text, mean, spread}} in the scores' units (0-1)."""
    if value is None:
        return {}
    value = _expect(path, value, dict, line, "published")
    result = {}
    for metric, text in value.items():
        match = re.fullmatch(r"\s*([-+]?[0-9.]+)\s*(?:±|\+-|\+/-)\s*([0-9.]+)\s*(%?)\s*", str(text))
        if not match:
            raise StudyError(f"{_where(path, value.lines[metric])}: published.{metric} must read like "
                             f"'99.23 ± 0.1 %' or '0.61 ± 0.05', got {text!r}")
        unit = 100.0 if match.group(3) else 1.0
        result[metric] = {"text": str(text).strip(), "mean": float(match.group(1)) / unit,
                          "spread": float(match.group(2)) / unit}
    return result


def load_study(path: str | os.PathLike, scale: str = FULL_SCALE, only: list[str] | None = None) -> Study:
    """Read, check and expand a study file into its trials; every problem is a StudyError naming the line."""
    path = Path(path)
    doc = read_yaml(path)
    _check_keys(path, doc, STUDY_KEYS, "the study")
    table = FlagTable()
    for key in ("name", "dataset", "methods", "seeds", "max_iter"):
        if key not in doc:
            raise StudyError(f"{_where(path, doc.line)}: the study has no {key!r}; see docs/studies.md")
    name = str(_expect(path, doc["name"], str, doc.lines["name"], "name"))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise StudyError(f"{_where(path, doc.lines['name'])}: name {name!r} must be a plain folder name "
                         "(letters, digits, '.', '_', '-')")
    dataset = str(doc["dataset"]).lower()
    if dataset not in table.datasets:
        raise StudyError(f"{_where(path, doc.lines['dataset'])}: unknown dataset {doc['dataset']!r}; main.py's "
                         f"--dataset accepts: {', '.join(table.datasets)}")

    # The scale: its entries override the study's, key by key.
    scales = _expect(path, doc.get("scales", _Map()), dict, doc.lines.get("scales", doc.line), "scales")
    scale_names = [FULL_SCALE] + [s for s in scales if s != FULL_SCALE]
    if scale not in scale_names:
        raise StudyError(f"{path}: no scale {scale!r}; this study has: {', '.join(scale_names)}")
    override = scales.get(scale) or _Map()
    override = _expect(path, override, dict, scales.lines.get(scale, doc.line), f"scales.{scale}")
    _check_keys(path, override, SCALE_KEYS, f"scales.{scale}")

    def pick(key):  # (value, line) from the scale if it sets the key, else from the study
        if key in override:
            return override[key], override.lines[key]
        return doc.get(key), doc.lines.get(key, doc.line)

    seeds, seeds_line = pick("seeds")
    seeds = _expect(path, seeds, list, seeds_line, "seeds")
    for seed, line in zip(seeds, getattr(seeds, "lines", [seeds_line] * len(seeds)), strict=True):
        _expect(path, seed, int, line, "each seed")
        if not 0 <= seed < 2**32:
            raise StudyError(f"{_where(path, line)}: seed {seed} must be between 0 and 2**32 - 1")
    if len(set(seeds)) != len(seeds) or not seeds:
        raise StudyError(f"{_where(path, seeds_line)}: seeds must be a non-empty list without repeats")
    max_iter, max_iter_line = pick("max_iter")

    doc_evaluation = _flag_map(path, table, doc.get("evaluation"), doc.lines.get("evaluation", doc.line),
                               "evaluation", group="evaluation")
    scale_evaluation = _flag_map(path, table, override.get("evaluation"), override.lines.get("evaluation", 0),
                                 f"scales.{scale}.evaluation", group="evaluation")
    study_flags = _flag_map(path, table, doc.get("flags"), doc.lines.get("flags", doc.line), "flags")
    scale_flags = _flag_map(path, table, override.get("flags"), override.lines.get("flags", 0),
                            f"scales.{scale}.flags")
    report = _expect(path, doc.get("report", _Map()), dict, doc.lines.get("report", doc.line), "report")
    _check_keys(path, report, REPORT_KEYS, "report")

    methods = _expect(path, doc["methods"], list, doc.lines["methods"], "methods")
    if not methods:
        raise StudyError(f"{_where(path, doc.lines['methods'])}: methods is empty; list at least one")
    entries, labels = [], {}
    for entry, line in zip(methods, methods.lines, strict=True):
        entry = _expect(path, entry, dict, line, "each methods entry")
        _check_keys(path, entry, METHOD_KEYS, "a methods entry")
        if "method" not in entry:
            raise StudyError(f"{_where(path, line)}: this methods entry has no `method:` (main.py --objective)")
        label = str(entry.get("label", entry["method"])).lower()
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", label):
            raise StudyError(f"{_where(path, entry.lines.get('label', line))}: label {label!r} must be letters, "
                             "digits, '.', '_' or '-' (it starts every trial name)")
        if label in labels:
            raise StudyError(f"{_where(path, line)}: label {label!r} is used twice (first on line {labels[label]}); "
                             "give each entry its own `label:`")
        labels[label] = line
        entries.append((entry, line, label))

    scale_methods = _expect(path, override.get("methods", _Map()), dict, override.lines.get("methods", 0),
                            f"scales.{scale}.methods")
    for label in scale_methods:
        if label not in labels:
            raise StudyError(f"{_where(path, scale_methods.lines[label])}: scales.{scale}.methods.{label}: no "
                             f"method entry has that label; labels: {', '.join(labels)}")
    if only:
        for label in only:
            if label not in labels:
                raise StudyError(f"--only {label}: no method entry of {path} has that label; "
                                 f"labels: {', '.join(labels)}")

    study = Study(path=path, name=name, scale=scale, folder_name=name if scale == FULL_SCALE else f"{name}_{scale}",
                  dataset=dataset, description=str(doc.get("description", "")).strip(),
                  source=str(doc.get("source", "")).strip(), max_iter=0, seeds=list(seeds), methods=[],
                  report=dict(report), scales=scale_names)
    names: dict[str, int] = {}
    for entry, line, label in entries:
        where = f"methods entry {label!r}"
        method = table.method(entry["method"])
        published = _published(path, entry.get("published"), entry.lines.get("published", line))
        study.methods.append({"label": label, "method": method or str(entry["method"]), "line": line,
                              "published": published})
        selected = not only or label in only
        if method is None and selected:
            runnable = [lb for e, _, lb in entries if table.method(e["method"])]
            hint = f"; to run the other entries meanwhile, pass --only {','.join(runnable)}" if runnable else ""
            raise StudyError(f"{_where(path, entry.lines['method'])}: unknown method {entry['method']!r}; "
                             f"main.py's --objective accepts: {', '.join(map(str, table.methods))}{hint}")
        if label in scale_methods and not scale_methods[label]:
            continue  # `label: null` under the scale's methods leaves the method out at this scale
        entry_override = scale_methods.get(label) or _Map()
        entry_override = _expect(path, entry_override, dict, scale_methods.lines.get(label, line),
                                 f"scales.{scale}.methods.{label}")
        _check_keys(path, entry_override, SCALE_METHOD_KEYS, f"scales.{scale}.methods.{label}")
        method_flags = _flag_map(path, table, entry.get("flags"), entry.lines.get("flags", line), f"{where} flags",
                                 known=selected)
        override_flags = _flag_map(path, table, entry_override.get("flags"), entry_override.lines.get("flags", line),
                                   f"scales.{scale}.methods.{label}.flags", known=selected)
        if "grid" in entry_override:
            grid, grid_line = entry_override["grid"], entry_override.lines["grid"]
        else:
            grid, grid_line = entry.get("grid"), entry.lines.get("grid", line)
        # Precedence, lowest first: study flags, evaluation, the entry's flags, the scale's flags, the
        # scale's flags for this entry, then the grid point (a grid key may not also be a fixed flag).
        layers = (study_flags, doc_evaluation, scale_evaluation, method_flags, scale_flags, override_flags)
        fixed = {k: v for layer in layers for k, v in layer.items()}
        fixed_lines = {k: ln for layer in layers for k, ln in layer.lines.items()}
        for point, point_lines in _grid_points(path, table, grid, grid_line, f"{where} grid", known=selected):
            clash = sorted(set(point) & set(fixed))
            if clash:
                raise StudyError(f"{_where(path, point_lines[clash[0]])}: {clash[0]!r} is both swept in the grid and "
                                 "fixed under flags; keep one")
            flags = {k: format_value(v) for k, v in {**fixed, **point}.items()}
            flags.setdefault("save_output", "True")
            argv = ["--objective", method, "--dataset", dataset, "--max_iter", format_value(max_iter),
                    "--seed", str(seeds[0])] + [a for k, v in flags.items() for a in (f"--{k}", v)]
            args, message = table.parse(argv) if selected else (None, "")
            if args is None and selected:
                bad = re.search(r"--(\w+)", message)
                key = bad.group(1) if bad else None
                at = max_iter_line if key == "max_iter" else point_lines.get(key) or fixed_lines.get(key) or line
                raise StudyError(f"{_where(path, at)}: {where}: main.py refuses these flags: {message}")
            if selected:
                study.max_iter = args.max_iter
            iterations = str(args.max_iter) if selected else format_value(max_iter)
            for seed in seeds:
                trial_name = "_".join([label, *(f"{k}{_name_part(v)}" for k, v in point.items()), f"seed{seed}"])
                if trial_name in names:
                    raise StudyError(f"{_where(path, line)}: trial {trial_name} is planned twice (also by the entry "
                                     f"on line {names[trial_name]}); change a label or a grid")
                names[trial_name] = line
                study.trials.append(Trial(name=trial_name, label=label, method=method or str(entry["method"]),
                                          params=dict(point), seed=seed, flags={"max_iter": iterations, **flags},
                                          line=line, selected=selected))
    if not any(t.selected for t in study.trials):
        raise StudyError(f"{path}: scale {scale!r} leaves no trial to run")
    return study


# --------------------------------------------------------------------------- the trial folder


def trial_dir(study_dir: Path, trial: Trial) -> Path:
    return study_dir / trial.name


def trial_argv(trial: Trial, folder: Path, dataset: str, dset_dir: Path, cuda: bool) -> list[str]:
    """The command line of main.py for one trial (the same flags `python main.py ...` takes)."""
    flags = dict(trial.flags)
    argv = ["--objective", trial.method, "--dataset", dataset, "--seed", str(trial.seed),
            "--max_iter", flags.pop("max_iter"), "--eval_metrics", "True", "--viz_on", "False",
            "--cuda", str(cuda), "--dset_dir", str(dset_dir), "--ckpt_dir", str(folder / "checkpoints"),
            "--output_dir", str(folder / "outputs"), "--viz_name", trial.name]
    return argv + [a for k, v in flags.items() for a in (f"--{k}", v)]


def trial_record(study: Study, trial: Trial) -> dict:
    """What defines a trial's results (no folders, no device): stored in trial.json and compared on reruns."""
    return {"trial": trial.name, "study": study.name, "scale": study.scale, "dataset": study.dataset,
            "label": trial.label, "method": trial.method, "params": trial.params, "seed": trial.seed,
            "flags": trial.flags}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json_if_changed(path: Path, data: dict) -> None:
    if read_json(path) != json.loads(json.dumps(data)):
        write_json(path, data)


def is_finished(folder: Path) -> bool:
    result = read_json(folder / "result.json")
    return bool(result) and result.get("status") == "finished"


# --------------------------------------------------------------------------- one trial, in a Ray worker


@contextlib.contextmanager
def _output_to(log_path: Path):
    """Send everything the trial prints (Python and C level, stdout and stderr) to its log file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a", buffering=1, encoding="utf-8", errors="replace") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield log
        finally:
            log.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _error_text(log_path: Path, lines: int = 15) -> str:
    """The trial's error: its `error:` lines, else the end of its log."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {log_path})"
    attempt = text.rsplit("=== attempt", 1)[-1]
    errors = [line for line in attempt.splitlines() if line.startswith("error:") or "Error" in line[:40]]
    tail = errors or [line for line in attempt.splitlines() if line.strip()][-lines:]
    return "\n".join(tail[-lines:])


def latest_evaluation(run_dir: Path) -> tuple[Path | None, dict | None]:
    """The evaluation JSON of the latest iteration under outputs/<trial>/ (any eval_*.json name)."""
    best = None
    for candidate in run_dir.glob("eval_*.json"):
        data = read_json(candidate)
        if not isinstance(data, dict):
            continue
        step = data.get("iter")
        if not isinstance(step, int):
            match = re.match(r"eval_(\d+)", candidate.name)
            step = int(match.group(1)) if match else -1
        key = (step, candidate.stat().st_mtime)
        if best is None or key > best[0]:
            best = (key, candidate, data)
    return (best[1], best[2]) if best else (None, None)


def _precision(evaluation: dict, checkpoint: Path) -> str | None:
    """The precision the trial ran in: from the evaluation's provenance, else from the checkpoint's config."""
    for source in (evaluation, evaluation.get("provenance") or {}):
        if isinstance(source.get("precision"), str):
            return source["precision"]
    if checkpoint.exists():
        from checkpoint import load_checkpoint  # torch; only in the worker

        config = load_checkpoint(checkpoint).get("config", {})
        return config.get("precision_used") or config.get("precision")
    return None


def run_trial(spec: dict) -> dict:
    """Train and score one trial with main.main(argv); runs inside a Ray worker.

    main.py resumes from <ckpt_dir>/<trial>/last when it exists, so a retry after the process was
    killed continues where the last checkpoint left off. Returns a small status dict; the scores
    go to result.json, written only when the run finished and its evaluation exists.
    """
    folder = Path(spec["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "error.txt").unlink(missing_ok=True)  # from an earlier attempt; this one decides anew
    log_path = folder / TRIAL_LOG
    attempts = (read_json(folder / "attempts.json") or {}).get("attempts", [])
    attempts.append({"started": time.strftime("%Y-%m-%d %H:%M:%S"), "host": socket.gethostname(), "pid": os.getpid()})
    write_json(folder / "attempts.json", {"attempts": attempts})

    import torch

    torch.set_num_threads(spec["threads"])  # the trial's CPU share; Ray sets OMP_NUM_THREADS to match
    with contextlib.suppress(ImportError, ValueError):
        import numba  # evaluation's DCI trees run in numba threads

        numba.set_num_threads(min(spec["threads"], numba.config.NUMBA_NUM_THREADS))
    import main

    start = time.perf_counter()
    with _output_to(log_path) as log:
        print(f"=== attempt {len(attempts)} of {spec['name']} on {socket.gethostname()} (pid {os.getpid()}), "
              f"{attempts[-1]['started']}: python main.py {' '.join(spec['argv'])}", file=log, flush=True)
        try:
            status = main.main(spec["argv"])
        except SystemExit as stop:  # argparse refusing a flag
            status = stop.code if isinstance(stop.code, int) else 2
        except Exception:
            traceback.print_exc(file=log)  # the log keeps the whole story; Ray reports it to the driver
            raise
    wall = time.perf_counter() - start
    outcome = {"name": spec["name"], "folder": str(folder), "wall_s": wall, "attempts": len(attempts)}
    if status in (130, 143):  # SIGINT, SIGTERM: main.py saved a checkpoint and stopped
        raise TrialInterrupted(f"{spec['name']} stopped by a signal (exit status {status}) after saving its "
                               "checkpoint; a retry resumes from it")
    if status != 0:
        error = _error_text(log_path)
        atomic_write(folder / "error.txt", lambda f: f.write(f"exit status {status}\n{error}\n".encode()))
        return {**outcome, "status": "failed", "exit": status, "error": error}

    eval_path, evaluation = latest_evaluation(folder / "outputs" / spec["name"])
    if evaluation is None:
        error = f"main.py finished but wrote no evaluation (eval_*.json) under {folder / 'outputs' / spec['name']}"
        atomic_write(folder / "error.txt", lambda f: f.write(f"{error}\n".encode()))
        return {**outcome, "status": "failed", "exit": status, "error": error}
    result = {
        **spec["record"], "status": "finished", "iterations": evaluation.get("iter", spec["max_iter"]),
        "scores": evaluation.get("summary", {}), "note": evaluation.get("note", ""),
        "precision": _precision(evaluation, folder / "checkpoints" / spec["name"] / "last"),
        "wall_s": round(wall, 2), "attempts": len(attempts), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "evaluation_file": str(eval_path.relative_to(folder)), "argv": spec["argv"],
    }
    write_json(folder / "result.json", result)
    (folder / "error.txt").unlink(missing_ok=True)
    return {**outcome, "status": "finished", "scores": result["scores"], "note": result["note"]}


# --------------------------------------------------------------------------- the driver


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows the defaults, except where the help says in words what an unset flag means."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Run a study (methods × hyperparameters × seeds) on Ray and report it. Format of study "
                    "files: docs/studies.md.", formatter_class=_HelpFormatter)
    p.add_argument("study", type=Path, help="the study file, e.g. studies/higgins2017_fig6.yaml")
    study = p.add_argument_group("study")
    study.add_argument("--scale", default=FULL_SCALE,
                       help="which scale of the study to run: full (what a GPU cluster runs) or one the file "
                            "defines, e.g. cpu (minutes on a laptop); other scales get their own folder <name>_<scale>")
    study.add_argument("--only", default=None, metavar="LABELS",
                       type=lambda s: [x.strip().lower() for x in s.split(",") if x.strip()],
                       help="run only these method entries (labels, comma-separated); default: all. The others' "
                            "folders are left as they are, and the report covers every trial that finished")
    study.add_argument("--out_dir", default=Path("sweeps"), type=Path, help="studies go to <out_dir>/<study>/")
    study.add_argument("--dset_dir", default=Path("data"), type=Path,
                       help="the datasets folder every trial shares (dSprites is generated there once when missing)")
    study.add_argument("--report_only", action="store_true",
                       help="rebuild results.csv, report.md and the plots from the folder, without Ray")
    study.add_argument("--dry_run", action="store_true", help="list the trials and their main.py command lines")
    ray_group = p.add_argument_group("Ray")
    ray_group.add_argument("--address", default=None,
                           help="join this Ray cluster ('auto', or host:port); default: start Ray on this machine, "
                                "or use the Ray this process already started")
    ray_group.add_argument("--num_cpus", default=None, type=int,
                           help="CPUs of the Ray started on this machine (default: all cores)")
    ray_group.add_argument("--cpus_per_trial", default=1.0, type=float,
                           help="CPUs Ray reserves for each trial; its torch threads are set to match")
    ray_group.add_argument("--gpus_per_trial", default=0.0, type=float,
                           help="GPUs per trial; fractions share one device (0.25: four trials per GPU). "
                                "0 runs on CPU (--cuda False)")
    ray_group.add_argument("--max_retries", default=3, type=int,
                           help="times Ray reruns a trial whose process died; each rerun resumes from its checkpoint")
    ray_group.add_argument("--stop_timeout", default=60.0, type=float,
                           help="on Ctrl-C, seconds to wait for running trials to save a checkpoint")
    ray_group.add_argument("--ray_logs", action="store_true",
                           help="show Ray's own log lines and the trials' output in this console (each trial's "
                                "output is always in <trial>/train.log)")
    args = p.parse_args(argv)
    if args.cpus_per_trial <= 0:
        p.error(f"argument --cpus_per_trial: must be > 0, got {args.cpus_per_trial}")
    if args.gpus_per_trial < 0 or (args.gpus_per_trial > 1 and not float(args.gpus_per_trial).is_integer()):
        p.error(f"argument --gpus_per_trial: a fraction up to 1 or a whole number, got {args.gpus_per_trial}")
    if args.max_retries < 0:
        p.error(f"argument --max_retries: must be >= 0, got {args.max_retries}")
    return args


def write_plan(study: Study, study_dir: Path) -> None:
    """study.json: what study_report.py needs to rebuild the report from the folder alone."""
    plan = {
        "name": study.name, "scale": study.scale, "study_file": str(study.path), "dataset": study.dataset,
        "description": study.description, "source": study.source, "max_iter": study.max_iter, "seeds": study.seeds,
        "metric": study.report.get("metric", "beta_vae"),
        "published_source": study.report.get("published_source", ""),
        "methods": [{k: m[k] for k in ("label", "method", "published")} for m in study.methods],
        "trials": [{"trial": t.name, "label": t.label, "method": t.method, "params": t.params, "seed": t.seed}
                   for t in study.trials],
    }
    write_json_if_changed(study_dir / "study.json", plan)


def check_folders(study: Study, study_dir: Path) -> None:
    """Refuse to mix results: a trial folder made by a different configuration is an error, before any run."""
    problems = []
    for trial in study.trials:
        folder = trial_dir(study_dir, trial)
        saved = read_json(folder / "trial.json")
        if saved is None:
            continue
        wanted = json.loads(json.dumps(trial_record(study, trial)))
        diff = sorted(k for k in set(saved["flags"]) | set(wanted["flags"])
                      if saved["flags"].get(k) != wanted["flags"].get(k))
        diff += [k for k in ("method", "seed", "dataset") if saved.get(k) != wanted.get(k)]
        if diff:
            shown = ", ".join(f"{k}: {saved['flags'].get(k, saved.get(k))} -> {wanted['flags'].get(k, wanted.get(k))}"
                              for k in diff)
            problems.append(f"  {folder}: {shown}")
    if problems:
        raise StudyError("these trial folders were made by a different configuration of the study:\n"
                         + "\n".join(problems)
                         + "\nGive the changed study a new `name:` (or run another --scale), or delete those "
                           "folders to run them again; nothing was started.")


def prepare_data(dataset: str, dset_dir: Path) -> None:
    """Make sure the shared dataset is there before trials start, so they never race to generate it."""
    import dataset as datasets

    spec = datasets.DATASETS[dataset]
    path = spec.path(dset_dir)
    if spec.kind == "dsprites":
        datasets.ensure_dsprites(path)
    elif not path.exists():
        raise StudyError(f"{spec.name}: expected the data at {path}; get it from {spec.source} "
                         "or pass --dset_dir with the folder that holds it")


def start_ray(args: argparse.Namespace) -> bool:
    """Join the cluster at --address, or start Ray here. Returns whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    options = dict(include_dashboard=False, log_to_driver=args.ray_logs,
                   logging_level=logging.INFO if args.ray_logs else logging.ERROR)
    if not args.address:  # "local": a new instance here, even when a `ray start` cluster runs on this machine
        ray.init(address="local", num_cpus=args.num_cpus, **options)
        return True
    join = (f"--address {args.address}: could not join a Ray cluster there ({{}}). Start one with `ray start "
            "--head` (and `ray start --address <head>:6379` on the other nodes), or leave out --address to run "
            "on this machine. A cluster with token authentication (what `ray start` sets up since Ray 2.59) "
            "also needs RAY_AUTH_MODE=token here, and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token. "
            "Nothing was started.")
    host, _, port = args.address.rpartition(":")
    if host and port.isdigit() and "://" not in args.address:  # Ray would retry an unreachable head for minutes
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as err:
            raise StudyError(join.format(err)) from None
    try:
        ray.init(address=args.address, **options)
    except (ConnectionError, RuntimeError, TimeoutError) as err:
        raise StudyError(join.format(err)) from None
    return True


def _format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def _summary_line(outcome: dict, metric: str) -> str:
    wall = _format_seconds(outcome["wall_s"]) if "wall_s" in outcome else "?"
    if outcome["status"] == "finished":
        scores = outcome.get("scores") or {}
        score = (f"{metric} {scores[metric]:.3f}" if isinstance(scores.get(metric), (int, float))
                 else "no scores (" + (outcome.get("note") or "none in the evaluation").split(";")[0] + ")")
        retried = f", {outcome['attempts']} attempts" if outcome.get("attempts", 1) > 1 else ""
        return f"finished {outcome['name']}  {score}  wall {wall}{retried}"
    exit_status = outcome.get("exit")
    how = f"exit status {exit_status}" if isinstance(exit_status, int) else f"error {exit_status}"
    return (f"FAILED   {outcome['name']}  {how}  wall {wall}\n"
            f"  folder: {outcome['folder']} (log: {Path(outcome['folder']) / TRIAL_LOG})\n"
            + "\n".join(f"  | {line}" for line in str(outcome.get("error", "")).splitlines()))


def run_trials(study: Study, study_dir: Path, todo: list[Trial], args: argparse.Namespace) -> tuple[int, int]:
    """Run the trials on Ray, one line per finished trial and a progress bar; returns (finished, failed)."""
    import ray
    from tqdm import tqdm

    started = start_ray(args)
    try:
        resources = ray.cluster_resources()
        if args.cpus_per_trial > resources.get("CPU", 0):
            raise StudyError(f"--cpus_per_trial {args.cpus_per_trial:g}, but the Ray cluster has "
                             f"{resources.get('CPU', 0):g} CPUs; no trial could ever start")
        if args.gpus_per_trial > resources.get("GPU", 0):
            raise StudyError(f"--gpus_per_trial {args.gpus_per_trial:g}, but the Ray cluster has "
                             f"{resources.get('GPU', 0):g} GPUs; pass --gpus_per_trial 0 to run on CPUs")
        threads = max(1, int(args.cpus_per_trial))
        env = {"TQDM_MININTERVAL": TRIAL_TQDM_MININTERVAL,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        remote = ray.remote(run_trial)
        cuda = args.gpus_per_trial > 0
        dset_dir = args.dset_dir.resolve()
        pending = {}
        for trial in todo:
            folder = trial_dir(study_dir, trial).resolve()
            spec = {"name": trial.name, "folder": str(folder), "threads": threads, "max_iter": study.max_iter,
                    "argv": trial_argv(trial, folder, study.dataset, dset_dir, cuda),
                    "record": trial_record(study, trial)}
            ref = remote.options(name=trial.name, num_cpus=args.cpus_per_trial, num_gpus=args.gpus_per_trial,
                                 max_retries=args.max_retries, retry_exceptions=[TrialInterrupted],
                                 runtime_env={"env_vars": env}).remote(spec)
            pending[ref] = trial
        where = f"the Ray cluster at {args.address}" if args.address else "Ray on this machine"
        at_once = int(resources.get("CPU", 0) // args.cpus_per_trial)
        if cuda:
            at_once = min(at_once, int(resources.get("GPU", 0) / args.gpus_per_trial + 1e-9))
        print(f"{len(todo)} trials on {where} ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs: "
              f"up to {at_once} at a time); each trial's output: {study_dir}/<trial>/{TRIAL_LOG}", flush=True)
        metric = study.report.get("metric", "beta_vae")
        finished = failed = 0
        bar = tqdm(total=len(todo), desc=study.folder_name, unit="trial", dynamic_ncols=True)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                trial = pending.pop(done[0])
                try:
                    outcome = ray.get(done[0])
                except ray.exceptions.RayError as err:  # an exception in the trial, or its process died too often
                    folder = trial_dir(study_dir, trial)
                    text = _ANSI.sub("", str(err)).strip()
                    atomic_write(folder / "error.txt", lambda f, text=text: f.write(f"{text}\n".encode()))
                    outcome = {"name": trial.name, "folder": str(folder), "status": "failed",
                               "exit": type(err).__name__, "error": "\n".join(text.splitlines()[-15:])}
                finished += outcome["status"] == "finished"
                failed += outcome["status"] != "finished"
                bar.write(_summary_line(outcome, metric))
                bar.update(1)
        except KeyboardInterrupt:
            bar.close()
            stop_trials(list(pending), args.stop_timeout)
            raise
        bar.close()
        return finished, failed
    finally:
        if started:
            ray.shutdown()


def stop_trials(refs: list, timeout: float) -> None:
    """Ctrl-C: ask each running trial to stop (Ray delivers SIGINT; main.py saves a checkpoint), then wait."""
    import ray

    print(f"\nStopping: asking {len(refs)} unfinished trials to save a checkpoint (up to {timeout:g} s; "
          "Ctrl-C again to stop at once) ...", file=sys.stderr, flush=True)
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref)
    with contextlib.suppress(KeyboardInterrupt):
        ray.wait(refs, num_returns=len(refs), timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        study = load_study(args.study, args.scale, args.only)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    study_dir = args.out_dir / study.folder_name
    todo_all = [t for t in study.trials if t.selected and not is_finished(trial_dir(study_dir, t))]
    if args.dry_run:
        cuda = args.gpus_per_trial > 0
        for trial in study.trials:
            if not trial.selected:
                continue
            state = "to run" if trial in todo_all else "finished"
            folder = trial_dir(study_dir, trial)
            print(f"{trial.name} ({state}): python main.py "
                  f"{' '.join(trial_argv(trial, folder, study.dataset, args.dset_dir, cuda))}")
        print(f"{sum(t.selected for t in study.trials)} trials, {len(todo_all)} to run, in {study_dir}")
        return 0
    try:
        check_folders(study, study_dir)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_plan(study, study_dir)
    if args.report_only or not todo_all:
        if not args.report_only:
            print(f"{study.folder_name}: all {sum(t.selected for t in study.trials)} trials finished earlier; "
                  "nothing to train.")
        paths = study_report.build_report(study_dir)
        print(f"Report: {paths['markdown']}")
        return 0

    selected = sum(t.selected for t in study.trials)
    left_out = f" ({len(study.trials) - selected} more left out by --only)" if selected < len(study.trials) else ""
    print(f"{study.folder_name}: {selected} trials{left_out}, {selected - len(todo_all)} finished earlier, "
          f"{len(todo_all)} to run, in {study_dir}", flush=True)
    for trial in todo_all:
        write_json_if_changed(trial_dir(study_dir, trial) / "trial.json", trial_record(study, trial))
    try:
        prepare_data(study.dataset, args.dset_dir)
        finished, failed = run_trials(study, study_dir, todo_all, args)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Stopped. Run the same command again: finished trials are kept, the others resume from their "
              "last checkpoint.", file=sys.stderr)
        with contextlib.suppress(Exception):
            study_report.build_report(study_dir)
        return 130
    paths = study_report.build_report(study_dir)
    print(f"{finished} trials finished, {failed} failed. Report: {paths['markdown']}")
    if failed:
        print(f"error: {failed} trials failed after their retries (see FAILED above); run the same command to "
              "retry them once fixed.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    import sweep  # run as the module `sweep`, so Ray workers import run_trial by name instead of by value

    try:
        sys.exit(sweep.main())
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
