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
import json
import logging
import os
import re
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from storage.runlock import RunLock, RunLocked
from studies import reaper
from studies import report as study_report
from studies.names import FULL_SCALE
from studies.spec import Study, StudyError, Trial, load_study
from utils import atomic_write

ROOT = Path(__file__).resolve().parents[1]  # the repository

TRIAL_LOG = "train.log"
# A trial's progress bar, written into its log: one update every this many seconds, not ten a second.
TRIAL_TQDM_MININTERVAL = "30"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in Ray's error text


MAX_TRIALS = 1000  # more trials to run than this need --max_trials: a typo in a grid can plan days of work
EX_TEMPFAIL = 75  # sysexits.h: some trials are being run by another sweep; run the same command again later


class SweepStopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP to the sweep: handled as Ctrl-C is (the trials save, Ray stops), exit 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


_received: list[int] = []  # the stop signals received: Ray's wait turns our exception into a plain KeyboardInterrupt


def _raise_stop(signum, _frame):
    _received.append(signum)
    raise SweepStopped(signum)


def stop_signal(stop: KeyboardInterrupt) -> int:
    """The signal behind a KeyboardInterrupt: SIGTERM or SIGHUP if one came, else SIGINT (Ctrl-C)."""
    return getattr(stop, "signum", None) or (_received[-1] if _received else signal.SIGINT)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # SIGINT already raises KeyboardInterrupt


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM and SIGHUP raise SweepStopped while the sweep runs (Ray's own SIGTERM handler would exit 1
    without stopping the trials); the previous handlers come back afterwards."""
    _received.clear()
    previous = {s: signal.signal(s, _raise_stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class TrialInterrupted(Exception):
    """main.py stopped on SIGINT/SIGTERM after saving a checkpoint (a preempted or drained node):
    Ray retries the trial, which resumes. A trial the sweep itself cancelled (Ctrl-C) is not retried."""


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
    return isinstance(result, dict) and result.get("status") == "finished"


RUN_TRACES = ("result.json", "checkpoints", "outputs", "attempts.json", TRIAL_LOG)  # what a started trial leaves


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
        from storage.checkpoint import load_checkpoint  # torch; only in the worker

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
    # Two sweeps of one study: the trial belongs to whichever locked its folder first; the other says so.
    lock = RunLock(folder, what="sweep")
    try:
        lock.__enter__()
    except RunLocked as err:
        if err.holder is None:  # the folder cannot be locked at all: the trial fails, saying why
            raise
        return {"name": spec["name"], "folder": str(folder), "status": "held", "holder": err.holder,
                "error": str(err)}
    try:
        return _run_locked_trial(spec, folder)
    finally:
        lock.release()


def _run_locked_trial(spec: dict, folder: Path) -> dict:
    (folder / "error.txt").unlink(missing_ok=True)  # from an earlier attempt; this one decides anew
    log_path = folder / TRIAL_LOG
    attempts = (read_json(folder / "attempts.json") or {}).get("attempts", [])
    attempts.append({"started": time.strftime("%Y-%m-%d %H:%M:%S"), "host": socket.gethostname(), "pid": os.getpid()})
    write_json(folder / "attempts.json", {"attempts": attempts})

    import main  # the trial's argv carries --threads: its CPU share (Ray sets OMP_NUM_THREADS to match)

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
    if status in {128 + s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}:  # main.py saved and stopped
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
    study.add_argument("--max_trials", default=MAX_TRIALS, type=int,
                       help="refuse to start more trials than this (a guard against a grid larger than meant)")
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
        # the evaluation scales of the trials that run: the report warns when they are not the full protocol
        "eval_scales": sorted({float(t.flags.get("eval_scale", 1.0)) for t in study.trials if t.selected}),
        "trials": [{"trial": t.name, "label": t.label, "method": t.method, "params": t.params, "seed": t.seed}
                   for t in study.trials],
    }
    write_json_if_changed(study_dir / "study.json", plan)


def folder_problem(study: Study, trial: Trial, folder: Path) -> str | None:
    """Why the trial's folder cannot be used as it is: made by another configuration, a record of the
    configuration missing or unreadable next to a run's files, or a damaged result.json; None if it can."""
    result = folder / "result.json"
    if result.exists() and not isinstance(read_json(result), dict):
        return f"{result} is damaged (not a JSON object), so whether the trial finished is unknown"
    record = folder / "trial.json"
    saved = read_json(record)
    if saved is None and not record.exists() and not any((folder / name).exists() for name in RUN_TRACES):
        return None  # nothing has run here yet
    if not isinstance(saved, dict) or not isinstance(saved.get("flags"), dict):
        state = "unreadable or not a trial record" if record.exists() else "missing"
        return f"{record} is {state}, so the configuration of the files beside it is unknown"
    wanted = json.loads(json.dumps(trial_record(study, trial)))
    flags = set(saved["flags"]) | set(wanted["flags"])
    diff = sorted(k for k in flags if saved["flags"].get(k) != wanted["flags"].get(k))
    diff += [k for k in ("method", "seed", "dataset") if saved.get(k) != wanted.get(k)]
    if not diff:
        return None
    return ", ".join(f"{k}: {saved['flags'].get(k, saved.get(k))} -> {wanted['flags'].get(k, wanted.get(k))}"
                     for k in diff)


def check_folders(study: Study, study_dir: Path) -> None:
    """Refuse to mix results: a trial folder made by a different configuration, or whose configuration or
    result cannot be read, is an error before any run."""
    problems = [f"  {trial_dir(study_dir, t)}: {problem}" for t in study.trials
                if (problem := folder_problem(study, t, trial_dir(study_dir, t)))]
    if problems:
        raise StudyError("these trial folders were made by a different configuration of the study, or their "
                         "record of it is missing or damaged:\n" + "\n".join(problems)
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


def start_ray(args: argparse.Namespace):
    """Join the cluster at --address, or start Ray here. Returns None when Ray was already initialised,
    else a handle for stop_ray: the watcher that ends the started Ray's agents if this process is killed
    (studies/reaper.py), or True."""
    import ray

    if ray.is_initialized():
        return None
    options = dict(include_dashboard=False, log_to_driver=args.ray_logs,
                   logging_level=logging.INFO if args.ray_logs else logging.ERROR)
    if not args.address:  # "local": a new instance here, even when a `ray start` cluster runs on this machine
        before = {pid for pid, _ in reaper.ray_processes()}
        ray.init(address="local", num_cpus=args.num_cpus, **options)
        signal.signal(signal.SIGTERM, _raise_stop)  # ray.init set its own, which exits 1 and stops no trial
        return reaper.start([p for p in reaper.ray_processes() if p[0] not in before]) or True
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
    signal.signal(signal.SIGTERM, _raise_stop)  # ray.init set its own, which exits 1 and stops no trial
    return True


def stop_ray(started) -> None:
    """ray.shutdown() for a Ray that start_ray started; then its watcher may go."""
    import ray

    if started is None:
        return
    ray.shutdown()
    reaper.stop(started if started is not True else None)


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
    if outcome["status"] == "held":
        return (f"held     {outcome['name']}  by another sweep of this study ({outcome.get('holder')}), which runs "
                "it; not run here")
    exit_status = outcome.get("exit")
    how = f"exit status {exit_status}" if isinstance(exit_status, int) else f"error {exit_status}"
    return (f"FAILED   {outcome['name']}  {how}  wall {wall}\n"
            f"  folder: {outcome['folder']} (log: {Path(outcome['folder']) / TRIAL_LOG})\n"
            + "\n".join(f"  | {line}" for line in str(outcome.get("error", "")).splitlines()))


def run_trials(study: Study, study_dir: Path, todo: list[Trial], args: argparse.Namespace) -> dict[str, int]:
    """Run the trials on Ray, one line per finished trial and a progress bar; returns the count per status
    (finished, failed, held: run by another sweep of the study)."""
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
                    "argv": trial_argv(trial, folder, study.dataset, dset_dir, cuda) + ["--threads", str(threads)],
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
        counts = {"finished": 0, "failed": 0, "held": 0}
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
                counts[outcome["status"]] += 1
                bar.write(_summary_line(outcome, metric))
                bar.update(1)
        except KeyboardInterrupt:
            bar.close()
            stop_trials(pending, study_dir, args.stop_timeout)
            raise
        bar.close()
        return counts
    finally:
        stop_ray(started)


def stop_trials(pending: dict, study_dir: Path, timeout: float) -> None:
    """A stop signal: ask each running trial to stop (Ray delivers SIGINT; main.py saves a checkpoint), wait,
    then say what each saved."""
    import ray

    refs = list(pending)
    print(f"\nStopping: asking {len(refs)} unfinished trials to save a checkpoint (up to {timeout:g} s; "
          "Ctrl-C again to stop at once) ...", file=sys.stderr, flush=True)
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref)
    with contextlib.suppress(KeyboardInterrupt):
        ray.wait(refs, num_returns=len(refs), timeout=timeout)
    for trial in pending.values():
        print(f"  {trial.name}: {_saved(trial_dir(study_dir, trial) / TRIAL_LOG)}", file=sys.stderr)


def _saved(log_path: Path) -> str:
    """What the trial's last attempt said about its stop (main.py's 'Received SIGINT at iteration N: ...')."""
    try:
        attempt = log_path.read_text(encoding="utf-8", errors="replace").rsplit("=== attempt", 1)[-1]
    except OSError:
        return "not started (nothing to save)"
    said = [line.strip() for line in attempt.splitlines() if line.strip().startswith("Received ")]
    return said[-1] if said else "no checkpoint saved by this stop (not started, or it had not answered in time)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        study = load_study(args.study, args.scale, args.only)
        study_dir = args.out_dir / study.folder_name
        check_folders(study, study_dir)  # --dry_run too: it says what a real run would
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    todo = [t for t in study.trials if t.selected and not is_finished(trial_dir(study_dir, t))]
    if args.dry_run:
        return dry_run(study, study_dir, todo, args)
    if len(todo) > args.max_trials and not args.report_only:
        print(f"error: {too_many(todo, args)} Nothing was started.", file=sys.stderr)
        return 2
    try:
        with stop_on_signals():
            return run_study(study, study_dir, todo, args)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM or SIGHUP: the trials were asked to save first
        signum = stop_signal(stop)
        print(f"Stopped by {signal.Signals(signum).name}. Run the same command again: finished trials are kept, "
              "the others resume from their last checkpoint.", file=sys.stderr)
        with contextlib.suppress(Exception):
            study_report.build_report(study_dir)
        return 128 + signum
    except OSError as err:  # a full disk or a read-only --out_dir
        print(f"error: could not write {err.filename or args.out_dir} ({err.strerror or err}). Check that the "
              "folder is writable and has free space (--out_dir for the study's files, --dset_dir for the data), "
              "or pass another --out_dir; run the same command again then.", file=sys.stderr)
        return 1


def too_many(todo: list[Trial], args: argparse.Namespace) -> str:
    return (f"{len(todo):,} trials to run, more than --max_trials {args.max_trials:,}: check the grids and seeds, "
            f"or pass --max_trials {len(todo)} to run them all.")


def dry_run(study: Study, study_dir: Path, todo: list[Trial], args: argparse.Namespace) -> int:
    cuda = args.gpus_per_trial > 0
    for trial in study.trials:
        if not trial.selected:
            continue
        state = "to run" if trial in todo else "finished"
        folder = trial_dir(study_dir, trial)
        print(f"{trial.name} ({state}): python main.py "
              f"{' '.join(trial_argv(trial, folder, study.dataset, args.dset_dir, cuda))}")
    print(f"{sum(t.selected for t in study.trials)} trials, {len(todo)} to run, in {study_dir}")
    if len(todo) > args.max_trials:
        print(f"warning: {too_many(todo, args)}", file=sys.stderr)
    return 0


def check_subsets(study: Study, todo: list[Trial], dset_dir: Path) -> None:
    """Values that only the data can refute, checked before Ray starts: a `subset` larger than the dataset."""
    asked = {t.name: int(t.flags["subset"]) for t in todo if "subset" in t.flags}
    if not asked:
        return
    import dataset as datasets

    try:
        images = len(datasets.load_dataset(datasets.DATASETS[study.dataset], dset_dir))
    except datasets.DataError as err:
        raise StudyError(str(err)) from None
    too_large = [f"  {name}: subset {size:,}" for name, size in asked.items() if size > images]
    if too_large:
        raise StudyError(f"the dataset {study.dataset} at {dset_dir} has {images:,} images, fewer than these trials' "
                         "`subset`:\n" + "\n".join(too_large) + f"\nLower `subset` in {study.path} to at most "
                         f"{images:,}; nothing was started.")


def run_study(study: Study, study_dir: Path, todo: list[Trial], args: argparse.Namespace) -> int:
    write_plan(study, study_dir)
    if args.report_only or not todo:
        if not args.report_only:
            print(f"{study.folder_name}: all {sum(t.selected for t in study.trials)} trials finished earlier; "
                  "nothing to train.")
        paths = study_report.build_report(study_dir)
        print(f"Report: {paths['markdown']}")
        return 0
    selected = sum(t.selected for t in study.trials)
    left_out = f" ({len(study.trials) - selected} more left out by --only)" if selected < len(study.trials) else ""
    print(f"{study.folder_name}: {selected} trials{left_out}, {selected - len(todo)} finished earlier, "
          f"{len(todo)} to run, in {study_dir}", flush=True)
    prepare_data(study.dataset, args.dset_dir)
    check_subsets(study, todo, args.dset_dir)
    for trial in todo:
        write_json_if_changed(trial_dir(study_dir, trial) / "trial.json", trial_record(study, trial))
    counts = run_trials(study, study_dir, todo, args)
    paths = study_report.build_report(study_dir)
    held = f", {counts['held']} run by another sweep" if counts["held"] else ""
    print(f"{counts['finished']} trials finished, {counts['failed']} failed{held}. Report: {paths['markdown']}")
    if counts["failed"]:
        print(f"error: {counts['failed']} trials failed after their retries (see FAILED above); run the same "
              "command to retry them once fixed.", file=sys.stderr)
        return 1
    if counts["held"]:
        print(f"{counts['held']} trials are being run by another sweep of this study (see 'held' above); when it "
              "ends, run the same command again to report them.", file=sys.stderr)
        return EX_TEMPFAIL
    return 0


def cli() -> None:
    """The `sweep.py` command: main() with a quiet exit when its output pipe closes."""
    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    from studies.runner import cli as studies_cli  # Ray workers import run_trial by its module name, not __main__

    studies_cli()
