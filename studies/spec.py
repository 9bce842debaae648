"""Study files: YAML read with line numbers, checked against main.py's flags, expanded into trials.

A study file (format: docs/studies.md) names a dataset, methods with hyperparameter grids, seeds,
iterations, evaluation settings and scales. `load_study` turns one into a `Study`: every trial's
name and main.py flags. Every problem is a StudyError that names the file and the line. Nothing
here runs anything: studies/runner.py runs the trials on Ray.
"""

import argparse
import contextlib
import difflib
import io
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from studies.names import (
    FULL_SCALE,
    METHOD_KEYS,
    NAME_PATTERN,
    REPORT_KEYS,
    RESERVED,
    SCALE_KEYS,
    SCALE_METHOD_KEYS,
    STUDIES,
    STUDY_KEYS,
)


class StudyError(Exception):
    """A study file that cannot be run; the message names the file, the line and what to do."""


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
        raise StudyError(f"{path}: no such study file; the shipped ones are in {STUDIES}") from None
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


TRIAL_NAME_BYTES = 200  # main.NAME_BYTES: a trial's name is its --viz_name


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
    name, dataset = _study_name_and_dataset(path, doc, table)
    scale_names, override = _scale_override(path, doc, scale)
    settings = _Settings(path, doc, override, scale, table)
    report = _expect(path, doc.get("report", _Map()), dict, doc.lines.get("report", doc.line), "report")
    _check_keys(path, report, REPORT_KEYS, "report")
    entries = _method_entries(path, doc)
    scale_methods = _scale_methods(path, override, scale, [label for _, _, label in entries], only)
    study = Study(path=path, name=name, scale=scale, folder_name=name if scale == FULL_SCALE else f"{name}_{scale}",
                  dataset=dataset, description=str(doc.get("description", "")).strip(),
                  source=str(doc.get("source", "")).strip(), max_iter=0, seeds=list(settings.seeds), methods=[],
                  report=dict(report), scales=scale_names)
    names: dict[str, int] = {}  # trial name -> the line of the entry that planned it
    for entry, line, label in entries:
        method = table.method(entry["method"])
        selected = not only or label in only
        published = _published(path, entry.get("published"), entry.lines.get("published", line))
        study.methods.append({"label": label, "method": method or str(entry["method"]), "line": line,
                              "published": published})
        if method is None and selected:
            _unknown_method(path, entry, entries, table)
        if label in scale_methods and not scale_methods[label]:
            continue  # `label: null` under the scale's methods leaves the method out at this scale
        for trial in _entry_trials(settings, entry, line, label, method, selected, scale_methods, dataset):
            if trial.name in names:
                raise StudyError(f"{_where(path, line)}: trial {trial.name} is planned twice (also by the entry "
                                 f"on line {names[trial.name]}); change a label or a grid")
            names[trial.name] = line
            if selected:
                study.max_iter = int(trial.flags["max_iter"])
            study.trials.append(trial)
    if not any(t.selected for t in study.trials):
        raise StudyError(f"{path}: scale {scale!r} leaves no trial to run")
    return study


def _study_name_and_dataset(path: Path, doc: _Map, table: FlagTable) -> tuple[str, str]:
    for key in ("name", "dataset", "methods", "seeds", "max_iter"):
        if key not in doc:
            raise StudyError(f"{_where(path, doc.line)}: the study has no {key!r}; see docs/studies.md")
    name = str(_expect(path, doc["name"], str, doc.lines["name"], "name"))
    if not re.fullmatch(NAME_PATTERN, name):
        raise StudyError(f"{_where(path, doc.lines['name'])}: name {name!r} must be a plain folder name "
                         "(letters, digits, '.', '_', '-')")
    dataset = str(doc["dataset"]).lower()
    if dataset not in table.datasets:
        raise StudyError(f"{_where(path, doc.lines['dataset'])}: unknown dataset {doc['dataset']!r}; main.py's "
                         f"--dataset accepts: {', '.join(table.datasets)}")
    return name, dataset


def _scale_override(path: Path, doc: _Map, scale: str) -> tuple[list[str], _Map]:
    """(every scale's name, the chosen scale's entries): they override the study's, key by key."""
    scales = _expect(path, doc.get("scales", _Map()), dict, doc.lines.get("scales", doc.line), "scales")
    scale_names = [FULL_SCALE] + [s for s in scales if s != FULL_SCALE]
    for name in scale_names:  # a scale names the study's folder (<name>_<scale>): nothing may escape --out_dir
        if not re.fullmatch(NAME_PATTERN, str(name)):
            raise StudyError(f"{_where(path, scales.lines.get(name, doc.line))}: scale name {name!r} must be a plain "
                             "folder name (letters, digits, '.', '_', '-')")
    if scale not in scale_names:
        raise StudyError(f"{path}: no scale {scale!r}; this study has: {', '.join(scale_names)}")
    override = scales.get(scale) or _Map()
    override = _expect(path, override, dict, scales.lines.get(scale, doc.line), f"scales.{scale}")
    _check_keys(path, override, SCALE_KEYS, f"scales.{scale}")
    return scale_names, override


class _Settings:
    """The study's settings at one scale: seeds, iterations and the flag layers every entry starts from."""

    def __init__(self, path: Path, doc: _Map, override: _Map, scale: str, table: FlagTable):
        self.path, self.doc, self.override, self.scale, self.table = path, doc, override, scale, table
        self.seeds, seeds_line = self.pick("seeds")
        self.seeds = _expect(path, self.seeds, list, seeds_line, "seeds")
        lines = getattr(self.seeds, "lines", [seeds_line] * len(self.seeds))
        for seed, line in zip(self.seeds, lines, strict=True):
            _expect(path, seed, int, line, "each seed")
            if not 0 <= seed < 2**32:
                raise StudyError(f"{_where(path, line)}: seed {seed} must be between 0 and 2**32 - 1")
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise StudyError(f"{_where(path, seeds_line)}: seeds must be a non-empty list without repeats")
        self.max_iter, self.max_iter_line = self.pick("max_iter")
        self.layers = (  # lowest precedence first
            _flag_map(path, table, doc.get("flags"), doc.lines.get("flags", doc.line), "flags"),
            _flag_map(path, table, doc.get("evaluation"), doc.lines.get("evaluation", doc.line), "evaluation",
                      group="evaluation"),
            _flag_map(path, table, override.get("evaluation"), override.lines.get("evaluation", 0),
                      f"scales.{scale}.evaluation", group="evaluation"),
        )
        self.scale_flags = _flag_map(path, table, override.get("flags"), override.lines.get("flags", 0),
                                     f"scales.{scale}.flags")

    def pick(self, key: str) -> tuple:
        """(value, line) from the scale if it sets the key, else from the study."""
        if key in self.override:
            return self.override[key], self.override.lines[key]
        return self.doc.get(key), self.doc.lines.get(key, self.doc.line)


def _method_entries(path: Path, doc: _Map) -> list[tuple[_Map, int, str]]:
    """[(entry, line, label)] of the methods list, each label checked and unique."""
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
    return entries


def _scale_methods(path: Path, override: _Map, scale: str, labels: list[str], only: list[str] | None) -> _Map:
    """The scale's per-entry overrides, every label in them and in --only known."""
    scale_methods = _expect(path, override.get("methods", _Map()), dict, override.lines.get("methods", 0),
                            f"scales.{scale}.methods")
    for label in scale_methods:
        if label not in labels:
            raise StudyError(f"{_where(path, scale_methods.lines[label])}: scales.{scale}.methods.{label}: no "
                             f"method entry has that label; labels: {', '.join(labels)}")
    for label in only or []:
        if label not in labels:
            raise StudyError(f"--only {label}: no method entry of {path} has that label; labels: {', '.join(labels)}")
    return scale_methods


def _unknown_method(path: Path, entry: _Map, entries: list, table: FlagTable) -> None:
    runnable = [label for e, _, label in entries if table.method(e["method"])]
    hint = f"; to run the other entries meanwhile, pass --only {','.join(runnable)}" if runnable else ""
    raise StudyError(f"{_where(path, entry.lines['method'])}: unknown method {entry['method']!r}; "
                     f"main.py's --objective accepts: {', '.join(map(str, table.methods))}{hint}")


def _entry_trials(settings: _Settings, entry: _Map, line: int, label: str, method: str | None, selected: bool,
                  scale_methods: _Map, dataset: str) -> list[Trial]:
    """One methods entry expanded over its grid and the seeds. Flag precedence, lowest first: study flags,
    evaluation, the entry's flags, the scale's flags, the scale's flags for this entry, then the grid
    point (a grid key may not also be a fixed flag)."""
    path, table, scale = settings.path, settings.table, settings.scale
    where = f"methods entry {label!r}"
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
    layers = (*settings.layers, method_flags, settings.scale_flags, override_flags)
    fixed = {k: v for layer in layers for k, v in layer.items()}
    fixed_lines = {k: ln for layer in layers for k, ln in layer.lines.items()}
    trials = []
    for point, point_lines in _grid_points(path, table, grid, grid_line, f"{where} grid", known=selected):
        clash = sorted(set(point) & set(fixed))
        if clash:
            raise StudyError(f"{_where(path, point_lines[clash[0]])}: {clash[0]!r} is both swept in the grid and "
                             "fixed under flags; keep one")
        flags = {k: format_value(v) for k, v in {**fixed, **point}.items()}
        flags.setdefault("save_output", "True")
        argv = ["--objective", method or "", "--dataset", dataset, "--max_iter", format_value(settings.max_iter),
                "--seed", str(settings.seeds[0])] + [a for k, v in flags.items() for a in (f"--{k}", v)]
        args, message = table.parse(argv) if selected else (None, "")
        if args is None and selected:
            bad = re.search(r"--(\w+)", message)
            key = bad.group(1) if bad else None
            at = settings.max_iter_line if key == "max_iter" else point_lines.get(key) or fixed_lines.get(key) or line
            raise StudyError(f"{_where(path, at)}: {where}: main.py refuses these flags: {message}")
        iterations = str(args.max_iter) if selected else format_value(settings.max_iter)
        for seed in settings.seeds:
            trial_name = "_".join([label, *(f"{k}{_name_part(v)}" for k, v in point.items()), f"seed{seed}"])
            if len(trial_name.encode()) > TRIAL_NAME_BYTES:  # main.py's --viz_name limit
                raise StudyError(f"{_where(path, line)}: trial name {trial_name[:60]}... is longer than "
                                 f"{TRIAL_NAME_BYTES} bytes; shorten the label or the grid's keys")
            trials.append(Trial(name=trial_name, label=label, method=method or str(entry["method"]),
                                params=dict(point), seed=seed, flags={"max_iter": iterations, **flags},
                                line=line, selected=selected))
    return trials
