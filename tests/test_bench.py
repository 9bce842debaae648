"""bench.py runs end to end in its smoke-test mode and prints its table; no timing is asserted."""

import argparse
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from benchmarks import training as bench


def test_quick_bench_prints_the_table_and_the_ratio():
    proc = subprocess.run([sys.executable, str(ROOT / "bench.py"), "--quick", "--device", "cpu"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| config"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == list(bench.COLUMNS)
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ") and line != header}
    assert {"ref-B", "B", "H"} <= set(rows)
    for row in rows.values():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == len(bench.COLUMNS)
        assert float(cells[3]) > 0  # it/s
        assert cells[8].endswith(("MiB", "MiB ‡"))  # peak RSS
        assert cells[7] == "–" or cells[7].endswith("%")  # share of the fp32 matrix-product peak
    assert "× the reference pipeline's it/s" in proc.stdout
    assert "11.25 GiB" in proc.stdout  # the reference's full-data footprint is stated
    # What it ran on: CPU, torch's instruction set, threads, native bf16, the fp32 peak.
    machine = next(line for line in lines if line.startswith("CPU native:"))
    assert "torch kernels" in machine and "threads" in machine and "native bf16: " in machine
    assert "fp32 matrix-product peak" in machine


def test_layers_table_times_every_decoder_layer_on_both_cpu_kinds(monkeypatch, tmp_path, capsys):
    """report_layers asks a worker for each CPU kind (run_worker caps the instruction set for "avx2",
    as for every configuration); here the workers run in this process, one call per figure."""
    kinds = []

    def in_process(job):
        kinds.append(job.options)
        return bench.time_layers(job)

    monkeypatch.setattr(bench, "run_worker", in_process)
    bench.report_layers(argparse.Namespace(iters=1, threads=0), str(tmp_path))
    assert kinds == [[], ["avx2"]]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and "C_in" not in line]
    assert len(rows) == 2 * len(bench.DECODER_LAYERS)
    assert [row[1] for row in rows] == ["native"] * len(bench.DECODER_LAYERS) + ["AVX2 cap"] * len(bench.DECODER_LAYERS)
    assert [row[0] for row in rows[:2]] == ["32 -> 32, 4×4 -> 8×8", "32 -> 32, 8×8 -> 16×16"]
    for row in rows:
        assert row[2] in ("fp32", "bf16")
        assert all(float(cell.removesuffix(" ms")) > 0 for cell in row[3:7])
        assert row[7].endswith("×")


def test_help_lists_the_configurations():
    text = bench.build_parser().format_help()
    for name in ("ref-B", "`B`", "`H`", "avx2", "unfused", "torchconv", "--layers"):
        assert name in text
    assert "(default: 60)" in text  # defaults are shown


def test_config_names_and_options_are_checked():
    assert bench.parse_configs("ref-B,B:fp32+compile") == [("ref-B", []), ("B", ["fp32", "compile"])]
    assert bench.parse_configs("ref-B:avx2,B:avx2+unfused") == [("ref-B", ["avx2"]), ("B", ["avx2", "unfused"])]
    assert bench.parse_configs("ref-B:avx512bf16,B:avx512bf16") == [("ref-B", ["avx512bf16"]),
                                                                    ("B", ["avx512bf16"])]
    for bad in ("C", "B:fp16", "ref-B:bf16", "B:avx2+avx512bf16"):
        with pytest.raises(argparse.ArgumentTypeError, match="bad config"):
            bench.parse_configs(bad)


@pytest.mark.parametrize("options, env", [([], {}), (["avx2", "unfused"], bench.CAPS["avx2"]),
                                          (["avx512bf16"], {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"})])
def test_each_cap_runs_its_worker_under_that_instruction_set(monkeypatch, options, env):
    """The worker process gets the cap's variables (and only those): the same machine as another CPU kind."""
    seen = {}

    def fake_run(command, capture_output, text, cwd, env):
        seen.update(env)
        return subprocess.CompletedProcess(command, 0, stdout=bench.RESULT_TAG + '{"it_s": 1.0}\n', stderr="")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    for key in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(key, raising=False)
    assert bench.run_worker(bench.Job("B", options, "cpu", 1, 0, "", 0, "")) == {"it_s": 1.0}
    capped = {key: seen[key] for key in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
              if key in seen}
    assert capped == env
    assert bench.cap_of(options) == next((o for o in options if o in bench.CAPS), "")


def test_the_contention_bench_measures_one_trainer_alone_and_two_together(tiny_dsprites):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.contention", "--cases", "alone,pair:keep",
                           "--seconds", "1", "--warmup", "2", "--gap", "0",
                           "--dset_dir", str(tiny_dsprites)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith("| case")}
    assert set(rows) == {"alone", "pair:keep"}
    assert rows["alone"][5] == "1.00×" and float(rows["alone"][4]) > 0
    each = [float(r) for r in rows["pair:keep"][3].split(" + ")]
    assert len(each) == 2 and all(r > 0 for r in each)  # both trainers counted over the same window
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    default = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
    assert rows["pair:keep"][1] == f"{default} + {default}"  # :keep gives both torch's default threads


def test_every_rounds_it_s_is_shown_beside_the_median(capsys):
    def result(it_s):
        return {"it_s": it_s, "flops": 4.7e9, "peak_rss_mib": 840.0, "faults": 0.0, "data_wait": 0.01,
                "warmup_s": 0.5, "options": "fp32+channels_last", "images": 8192}

    results = {("ref-B", "cpu"): [result(11.0), result(12.5), result(11.6)],
               ("B", "cpu"): [result(26.8), result(22.8), result(28.9)]}
    args = argparse.Namespace(rounds=3, iters=60, warmup=10, threads=0)
    bench.report(results, {}, args, [])
    out = capsys.readouterr().out
    assert "it/s of every round: ref-B 11.00, 12.50, 11.60; B 26.80, 22.80, 28.90." in out
    assert "2.31× the reference pipeline's it/s (26.80 vs 11.60)" in out  # the median rounds' ratio
    assert "the median of the 3 rounds' own ratios is 2.44×" in out  # rounds: 2.44, 1.82, 2.49


def test_subnormals_are_counted_in_weights_and_optimiser_states():
    from benchmarks.denormals import count_subnormals

    def floats(*bits):  # from bit patterns: a float literal would be flushed where the process flushes
        return torch.tensor(bits, dtype=torch.int32).view(torch.float32)

    # 0x00000001 (1.4e-45) and 0x007FFFFF (1.18e-38 less a step) are subnormal; 2e-38, 1 and 0 are not.
    checkpoint = {"model_states": {"net": {"w": floats(0x00000001, 0x3F800000, 0)}},
                  "optim_states": {"optim": {"state": {0: {"exp_avg": floats(0x007FFFFF, 0x00D9C7E0),
                                                           "step": torch.tensor(5.0)}}}}}
    assert count_subnormals(checkpoint) == (2, 6)


def test_the_denormals_bench_times_kept_flushed_and_fresh_from_a_checkpoint(tmp_path, tiny_dsprites, monkeypatch,
                                                                            capsys, one_thread):
    """main asks a worker per variant; here the workers run in this process (run_worker is the subprocess)."""
    from conftest import run_args

    from benchmarks import denormals
    from main import main as train

    assert train(run_args(tmp_path, tiny_dsprites, "--max_iter", "2", "--viz_name", "trained")) == 0
    checkpoint = tmp_path / "checkpoints" / "trained" / "last"
    variants = []
    monkeypatch.setattr(denormals, "run_worker", lambda job: variants.append(job["variant"]) or denormals.worker(job))
    assert denormals.main(["--checkpoints", str(checkpoint), "--caps", "native", "--iters", "2", "--warmup", "1",
                           "--dset_dir", str(tiny_dsprites)]) == 0
    assert variants == ["kept", "flushed", "fresh"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| checkpoint")]
    assert len(rows) == 1
    assert rows[0][1] == "2" and rows[0][3] == "native"
    assert all(float(cell) > 0 for cell in rows[0][4:7])  # kept, flushed, fresh it/s
    assert rows[0][7].endswith("×") and rows[0][8].endswith("×")


def test_the_denormals_bench_refuses_a_checkpoint_without_adam_state(tmp_path):
    torch.save({"iter": 1, "config": {"dataset": "celeba"}}, tmp_path / "last")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.denormals", "--checkpoints", str(tmp_path / "last")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "--checkpoints" in proc.stderr and str(tmp_path / "last") in proc.stderr
