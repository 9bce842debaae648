"""Studies on a real embedded Ray: a 2×2 sweep, a trial killed mid-run, reruns, failures, bad study files.

One Ray instance serves the module (start-up is slow on 2 cores). Its workers run
`kill_after_first_checkpoint` at start-up: a trial whose folder holds the file KILL_MARK has its
process SIGKILLed right after its first checkpoint is written, once, as a crash or the OOM killer would.
"""

import hashlib
import json
import logging
import os
import re
import signal
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from conftest import ROOT, write_dsprites_npz  # noqa: E402

from dataset import DSPRITES_FILE  # noqa: E402
from studies import report as study_report  # noqa: E402
from studies import runner as sweep  # noqa: E402
from studies import spec  # noqa: E402

TESTS = Path(__file__).resolve().parent
KILL_MARK = "kill_after_first_checkpoint"
# 20-iteration trials on 256 tiny images; a checkpoint every 5 iterations.
FLAGS = "flags: {batch_size: 16, save_step: 5, gather_step: 5, display_step: 20, save_output: False}"


def kill_after_first_checkpoint() -> None:
    """Ray worker set-up hook: SIGKILL a marked trial's process once, right after its first checkpoint."""
    import solver

    save = solver.Checkpointer.save

    def save_then_kill(self, step, *args, **kwargs):
        written = save(self, step, *args, **kwargs)
        mark = self.folder.parent.parent / KILL_MARK  # <trial>/checkpoints/<trial> -> <trial>/KILL_MARK
        if written and mark.exists():
            mark.unlink()  # only once: the retry must run to the end
            os.kill(os.getpid(), signal.SIGKILL)
        return written

    solver.Checkpointer.save = save_then_kill


@pytest.fixture(scope="module")
def ray_cluster():
    """One embedded Ray for the module; sweep.py finds it initialised and uses it."""
    saved = os.environ.get("PYTHONPATH")
    # sweep.py passes the driver's PYTHONPATH on to the trials' workers: they must import this module.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), str(ROOT), saved]))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             runtime_env={"worker_process_setup_hook": "test_sweep.kill_after_first_checkpoint",
                          "env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with a tiny dSprites-format file under data/ (no factor grid: trials get the latent report only)."""
    root = tmp_path_factory.mktemp("sweep")
    write_dsprites_npz(root / "data" / DSPRITES_FILE)
    return root


def write_study(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\ndataset: dsprites\nmax_iter: 20\n{FLAGS}\n{body}")
    return path


def run(workdir: Path, study: Path, *extra: str) -> int:
    return sweep.main([str(study), "--out_dir", str(workdir / "sweeps"), "--dset_dir", str(workdir / "data"),
                       *extra])


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def snapshot(folder: Path) -> dict:
    """Every file under folder: (modification time, content hash)."""
    return {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def grid_study(ray_cluster, workdir) -> Path:
    """The 2×2 study (beta 1, 4 × seeds 0, 1), run once for the tests that read it."""
    study = write_study(workdir, "grid", "seeds: [0, 1]\nmethods:\n  - method: H\n    label: betavae\n"
                                         "    grid: {beta: [1, 4]}\n")
    assert run(workdir, study) == 0
    return workdir / "sweeps" / "grid"


def test_grid_study_runs_every_trial_and_tabulates_four_rows(grid_study):
    rows = read_csv(grid_study / "results.csv")
    assert [r["trial"] for r in rows] == ["betavae_beta1_seed0", "betavae_beta1_seed1", "betavae_beta4_seed0",
                                         "betavae_beta4_seed1"]
    assert {r["status"] for r in rows} == {"finished"}
    assert {(r["beta"], r["seed"]) for r in rows} == {("1", "0"), ("1", "1"), ("4", "0"), ("4", "1")}
    assert {r["iterations"] for r in rows} == {"20"}
    assert all(float(r["wall_s"]) > 0 and r["precision"] in ("bf16", "fp32") for r in rows)
    # The tiny file has no factor grid: no supervised score columns, and the evaluation's note says why. UDR
    # needs no labels: each trial is scored against the other seed of its setting.
    assert set(study_report.SCORES) & set(rows[0]) == {"udr"}
    assert all(0 <= float(r["udr"]) <= 1 for r in rows)
    assert all("no ground-truth factors" in r["note"] for r in rows)
    for r in rows:
        folder = grid_study / r["trial"]
        assert (folder / "checkpoints" / r["trial"] / "last").is_file()
        assert list((folder / "outputs" / r["trial"]).glob("eval_*.json"))
        result = json.loads((folder / "result.json").read_text())
        assert ["--beta", r["beta"]] == result["argv"][result["argv"].index("--beta"):][:2]
        assert result["argv"][result["argv"].index("--seed") + 1] == r["seed"]
    report = (grid_study / "report.md").read_text()
    assert "| betavae (beta=1) | 2/2 | 0 |" in report and "| betavae (beta=4) | 2/2 | 0 |" in report


def test_rerun_of_a_finished_study_trains_nothing(grid_study, workdir, monkeypatch, capsys):
    before = snapshot(grid_study)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished study started Ray or a trial")

    monkeypatch.setattr(sweep, "start_ray", must_not_run)
    monkeypatch.setattr(sweep, "run_trials", must_not_run)
    monkeypatch.setattr(sweep, "run_trial", must_not_run)
    assert run(workdir, workdir / "grid.yaml") == 0
    assert "all 4 trials finished earlier; nothing to train" in capsys.readouterr().out
    assert snapshot(grid_study) == before


def test_killed_trial_is_retried_by_ray_and_resumes_from_its_checkpoint(ray_cluster, workdir):
    study = write_study(workdir, "killed", "seeds: [0]\nmethods:\n  - method: H\n    grid: {beta: 4}\n")
    folder = workdir / "sweeps" / "killed" / "h_beta4_seed0"
    folder.mkdir(parents=True)
    (folder / KILL_MARK).touch()
    assert run(workdir, study) == 0
    assert not (folder / KILL_MARK).exists()  # the hook fired
    log = (folder / "train.log").read_text()
    assert log.count("=== attempt") == 2
    first, second = log.split("=== attempt 2", 1)
    assert "Starting fresh" in first and "Resumed from" not in first
    assert f"Resumed from {folder / 'checkpoints' / 'h_beta4_seed0' / 'last'} at iteration 5" in second
    result = json.loads((folder / "result.json").read_text())
    assert result["attempts"] == 2 and result["iterations"] == 20
    assert (folder / "checkpoints" / "h_beta4_seed0" / "20").is_file()  # the final snapshot of the resumed run


def test_failed_trial_is_reported_with_its_folder_and_the_study_exits_nonzero(ray_cluster, workdir, capsys):
    broken = workdir / "broken_data"
    (broken / DSPRITES_FILE).parent.mkdir(parents=True)
    (broken / DSPRITES_FILE).write_bytes(b"not an npz file")
    study = write_study(workdir, "failing", "seeds: [0]\nmethods:\n  - method: H\n")
    status = sweep.main([str(study), "--out_dir", str(workdir / "sweeps"), "--dset_dir", str(broken)])
    assert status == 1
    folder = workdir / "sweeps" / "failing" / "h_seed0"
    out, err = capsys.readouterr()
    assert "FAILED   h_seed0  exit status 1" in out and f"folder: {folder.resolve()}" in out
    assert str(broken / DSPRITES_FILE) in out  # main.py's own error text, naming the damaged file
    assert "1 trials failed" in err
    assert (folder / "error.txt").exists() and not (folder / "result.json").exists()
    assert read_csv(workdir / "sweeps" / "failing" / "results.csv")[0]["status"] == "failed"


@pytest.mark.parametrize("body, line, words", [
    ("seeds: [0]\nmethods:\n  - method: H\n  - method: nosuch\n    label: other\n", 8, "unknown method 'nosuch'"),
    ("seeds: [0]\nmethods:\n  - method: H\n    grid:\n      betta: [1, 4]\n", 9, "unknown key 'betta'"),
    ("seeds: [0]\nmethods:\n  - method: B\n    flags: {gamma: -1}\n", 8, "--gamma"),
    ("seeds: [0]\nmethods:\n  - method: H\n    flags: {seed: 3}\n", 8, "'seed'"),
    ("seeds: [0]\nmethods:\n  - method: H\n    grid: {beta: [1]}\n  - method: h\n    grid: {beta: 1}\n", 9,
     "label 'h' is used twice"),
])
def test_bad_study_file_is_a_clear_error_naming_the_line(tmp_path, capsys, body, line, words):
    study = write_study(tmp_path, "bad", body)
    assert sweep.main([str(study), "--out_dir", str(tmp_path / "sweeps")]) == 2
    err = capsys.readouterr().err
    assert f"{study}:{line}:" in err and words in err
    assert not (tmp_path / "sweeps").exists()  # nothing written, nothing started


def test_report_gives_median_and_range_over_seeds_beside_published_values(tmp_path):
    study_dir = tmp_path / "study"
    methods = [{"label": "vae", "method": "H",
                "published": {"beta_vae": {"text": "61.58 ± 0.5 %", "mean": 0.6158, "spread": 0.005}}}]
    trials = [{"trial": f"vae_seed{s}", "label": "vae", "method": "H", "params": {}, "seed": s} for s in range(4)]
    sweep.write_json(study_dir / "study.json", {
        "name": "study", "scale": "full", "dataset": "dsprites", "max_iter": 100, "seeds": [0, 1, 2, 3],
        "metric": "beta_vae", "methods": methods, "trials": trials})
    for seed, score in zip(range(3), (0.9, 0.6, 0.7), strict=True):  # seed 3 never ran
        sweep.write_json(study_dir / f"vae_seed{seed}" / "result.json", {
            "status": "finished", "iterations": 100, "scores": {"beta_vae": score, "mig": score / 10},
            "wall_s": 10.0 + seed, "precision": "fp32", "attempts": 1})
    paths = study_report.build_report(study_dir)
    report = paths["markdown"].read_text()
    assert "| vae | H | 3/4 | 0.700 [0.600, 0.900] | 0.070 [0.060, 0.090] |" in report
    assert "| vae | BetaVAE | 61.58 ± 0.5 % | 70.00 [60.00, 90.00] % | 3 |" in report
    rows = read_csv(paths["csv"])
    assert [r["status"] for r in rows] == ["finished"] * 3 + ["not run"]
    assert paths["bars"].read_bytes()[:4] == b"\x89PNG" and paths["violins"].read_bytes()[:4] == b"\x89PNG"
    assert study_report.main([str(study_dir)]) == 0  # the command line rebuilds it, Ray or not


def test_a_report_at_a_partial_evaluation_scale_says_it_cannot_be_compared(tmp_path):
    """eval_scale < 1 draws fewer points than the published protocol: the header, the table and the plots say so,
    and a setting left out by --only leaves no empty slot in the plots."""
    study_dir = tmp_path / "study"
    methods = [{"label": "vae", "method": "H", "published": {"beta_vae": {"text": "61.58 ± 0.5 %", "mean": 0.6158,
                                                                          "spread": 0.005}}},
               {"label": "other", "method": "H", "published": {}}]
    trials = [{"trial": f"{label}_seed{s}", "label": label, "method": "H", "params": {}, "seed": s}
              for label in ("vae", "other") for s in range(2)]
    sweep.write_json(study_dir / "study.json", {
        "name": "study", "scale": "cpu", "dataset": "dsprites", "max_iter": 10, "seeds": [0, 1], "metric": "beta_vae",
        "methods": methods, "trials": trials, "eval_scales": [0.05]})
    for seed in range(2):  # "other" was left out by --only
        sweep.write_json(study_dir / f"vae_seed{seed}" / "result.json", {
            "status": "finished", "iterations": 10, "scores": {"beta_vae": 0.5, "mig": 0.1}, "wall_s": 1.0,
            "precision": "fp32", "attempts": 1})
    report = study_report.build_report(study_dir)["markdown"].read_text()
    assert "**Not comparable with published numbers.** The trials were scored at eval_scale 0.05" in report
    assert "| ours (eval_scale 0.05: not comparable with published numbers) |" in report
    _, rows = study_report.load(study_dir)
    assert [name for name, _ in study_report.settings(rows)] == ["vae", "other"]  # the tables list both
    assert [name for name, _ in study_report.ran(study_report.settings(rows))] == ["vae"]  # the plots: what ran


# Methods other contributors are adding to main.py; the shipped studies already name them.
ANNOUNCED = {"factorvae", "btcvae", "dipvae_i", "dipvae_ii", "infogan", "pca", "ica"}


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_study_expands_at_both_scales(path):
    """Every entry whose method main.py has expands into uniquely named trials; the others name a method
    that is on its way (so a typo in a shipped file fails here)."""
    table = spec.FlagTable()
    entries = spec.read_yaml(path)["methods"]
    known = [str(e.get("label", e["method"])).lower() for e in entries if table.method(e["method"])]
    assert {str(e["method"]).lower() for e in entries if not table.method(e["method"])} <= ANNOUNCED
    for scale in ("full", "cpu"):
        study = spec.load_study(path, scale, only=known)
        assert len({t.name for t in study.trials}) == len(study.trials) > 0
        assert {t.label for t in study.trials if t.selected} == set(known)
        # Entries left out by --only are still planned, so the report lists them as not run.
        assert {t.label for t in study.trials} == {str(e.get("label", e["method"])).lower() for e in entries}


# --------------------------------------------------------------------------- reliability, third round (issue 24)


def used_folder(workdir: Path, study: str, trial: str) -> Path:
    """A trial folder that a run has used: a checkpoint folder and a log."""
    folder = workdir / "sweeps" / study / trial
    (folder / "checkpoints" / trial).mkdir(parents=True)
    (folder / "train.log").write_text("=== attempt 1\n")
    return folder


@pytest.mark.parametrize("record, words", [
    (None, "trial.json is missing"),
    ("[]", "trial.json is unreadable or not a trial record"),
    ("{not json", "trial.json is unreadable or not a trial record"),
])
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry_run"])
def test_a_used_trial_folder_without_a_readable_record_is_refused(tmp_path, capsys, record, words, dry_run):
    study = write_study(tmp_path, "norecord", "seeds: [0]\nmethods:\n  - method: H\n")
    folder = used_folder(tmp_path, "norecord", "h_seed0")
    sweep.write_json(folder / "result.json", {"status": "finished", "scores": {}})  # finished at another max_iter
    if record is not None:
        (folder / "trial.json").write_text(record)
    assert sweep.main([str(study), "--out_dir", str(tmp_path / "sweeps"), *(["--dry_run"] * dry_run)]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'trial.json'}" in err and words in err and "nothing was started" in err


def test_dry_run_reports_a_changed_study_as_the_real_run_does(tmp_path, capsys):
    study = write_study(tmp_path, "changed", "seeds: [0]\nmethods:\n  - method: H\n")
    folder = used_folder(tmp_path, "changed", "h_seed0")
    record = sweep.trial_record(spec.load_study(study), spec.load_study(study).trials[0])
    sweep.write_json(folder / "trial.json", {**record, "flags": {**record["flags"], "max_iter": "80"}})
    sweep.write_json(folder / "result.json", {"status": "finished", "scores": {}})
    for extra in (["--dry_run"], []):
        assert sweep.main([str(study), "--out_dir", str(tmp_path / "sweeps"), *extra]) == 2
        assert "max_iter: 80 -> 20" in capsys.readouterr().err


def test_a_damaged_result_is_reported_not_taken_for_unfinished(tmp_path, capsys):
    study = write_study(tmp_path, "damaged", "seeds: [0]\nmethods:\n  - method: H\n")
    folder = used_folder(tmp_path, "damaged", "h_seed0")
    loaded = spec.load_study(study)
    sweep.write_json(folder / "trial.json", sweep.trial_record(loaded, loaded.trials[0]))
    (folder / "result.json").write_text('{"status": "fini')
    assert sweep.main([str(study), "--out_dir", str(tmp_path / "sweeps")]) == 2
    assert f"{folder / 'result.json'} is damaged" in capsys.readouterr().err


def test_a_scale_name_that_would_leave_out_dir_is_refused(tmp_path, capsys):
    study = write_study(tmp_path, "escape", "seeds: [0]\nmethods:\n  - method: H\nscales:\n"
                                           "  x/../../../elsewhere:\n    max_iter: 10\n")
    assert sweep.main([str(study), "--scale", "x/../../../elsewhere", "--out_dir", str(tmp_path / "sweeps")]) == 2
    err = capsys.readouterr().err
    assert f"{study}:9:" in err and "scale name 'x/../../../elsewhere' must be a plain folder name" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["escape.yaml"]


def test_an_unwritable_out_dir_is_a_message_not_a_traceback(tmp_path, capsys):
    study = write_study(tmp_path, "nowhere", "seeds: [0]\nmethods:\n  - method: H\n")
    (tmp_path / "file").write_text("not a folder")
    assert sweep.main([str(study), "--out_dir", str(tmp_path / "file")]) == 1
    err = capsys.readouterr().err
    assert f"error: could not write {tmp_path / 'file'}" in err and "--out_dir" in err and "Traceback" not in err


def test_a_subset_larger_than_the_data_is_caught_before_ray(workdir, monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("Ray was started for trials that cannot run")

    monkeypatch.setattr(sweep, "start_ray", must_not_run)
    study = write_study(workdir, "subset", "seeds: [0]\nmethods:\n  - method: H\n    grid: {subset: [100, 1000]}\n")
    assert run(workdir, study) == 2
    err = capsys.readouterr().err
    assert "has 256 images, fewer than these trials' `subset`" in err and "h_subset1000_seed0: subset 1,000" in err
    assert "h_subset100_seed0" not in err


def test_a_huge_grid_needs_max_trials(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "start_ray", lambda args: pytest.fail("a 1,100-trial grid started Ray"))
    betas = ", ".join(str(b) for b in range(100))
    study = write_study(tmp_path, "huge", f"seeds: [{', '.join(map(str, range(11)))}]\nmethods:\n  - method: H\n"
                                         f"    grid: {{beta: [{betas}]}}\n")
    assert sweep.main([str(study), "--out_dir", str(tmp_path / "sweeps")]) == 2
    assert "1,100 trials to run, more than --max_trials 1,000" in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()


def test_a_trial_held_by_another_sweep_is_said_so_not_failed(ray_cluster, workdir, capsys):
    from storage.runlock import RunLock

    study = write_study(workdir, "twice", "seeds: [0]\nmethods:\n  - method: H\n")
    folder = workdir / "sweeps" / "twice" / "h_seed0"
    with RunLock(folder, what="sweep"):  # the other sweep, running this trial
        assert run(workdir, study) == sweep.EX_TEMPFAIL
    out, err = capsys.readouterr()
    assert f"held     h_seed0  by another sweep of this study (PID {os.getpid()}" in out and "FAILED" not in out
    assert "being run by another sweep of this study" in err
    assert not (folder / "checkpoints").exists()


def test_sigterm_to_the_sweep_stops_its_trials_after_they_save_and_exits_143(ray_cluster, workdir, monkeypatch,
                                                                           capsys):
    import threading
    import time

    study = workdir / "sigterm.yaml"
    study.write_text(f"name: sigterm\ndataset: dsprites\nmax_iter: 1000000\n{FLAGS}\nseeds: [0]\n"
                     "methods:\n  - method: H\n")
    last = workdir / "sweeps" / "sigterm" / "h_seed0" / "checkpoints" / "h_seed0" / "last"
    shutdowns = []
    monkeypatch.setattr(sweep, "start_ray", lambda args: True)  # as if this sweep had started the Ray it uses
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(True))

    def terminate_after_the_first_checkpoint():
        deadline = time.monotonic() + 120
        while not last.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_after_the_first_checkpoint, daemon=True).start()
    assert run(workdir, study) == 143
    err = capsys.readouterr().err
    saved = re.search(r"h_seed0: Received SIGINT at iteration (\d+): checkpoint saved to (\S+)\.", err)
    assert saved, err
    assert "Stopped by SIGTERM" in err and shutdowns == [True]
    from storage.checkpoint import load_checkpoint

    assert load_checkpoint(last)["iter"] == int(saved.group(1)) >= 5


def test_a_killed_sweep_leaves_no_ray_process_behind(tmp_path):
    import subprocess
    import sys
    import time

    from studies import reaper

    driver = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom studies import runner\n"
                               "runner.start_ray(runner.parse_args(['x.yaml', '--num_cpus', '1']))\n"
                               "print('up', flush=True)\ntime.sleep(300)\n"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        assert driver.stdout.readline().strip() == "up"
        processes = reaper.ray_processes(driver.pid)
        names = " ".join(Path(f"/proc/{pid}/cmdline").read_text() for pid, _ in processes)
        assert "raylet" in names and "agent" in names.lower()
    finally:
        driver.kill()
        driver.wait()
    def alive(pid: int, start: int) -> bool:  # the same process (not a reused PID), and not a zombie
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return False
        return int(fields[19]) == start and fields[0] != "Z"

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(*p) for p in processes):
        time.sleep(0.2)
    left = [pid for pid, start in processes if alive(pid, start)]
    assert not left, f"{len(left)} Ray processes outlived the killed sweep by 10 s"


def test_the_plan_records_the_evaluation_scales_of_the_trials(tmp_path):
    study = spec.load_study(ROOT / "studies" / "higgins2017_fig6.yaml", "cpu")
    sweep.write_plan(study, tmp_path)
    assert json.loads((tmp_path / "study.json").read_text())["eval_scales"] == [0.05]
