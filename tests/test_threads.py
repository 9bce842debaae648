"""--threads and what a run does on a busy machine (hardware/threads.py, main.pick_threads)."""

import pytest
import torch

import main as train_main
from hardware import threads as threads_module
from hardware.threads import CpuUse, apply_threads, cpu_use, threads_for_busy
from main import parse_args

BUSY = CpuUse(cpus=2, busy=1.0, how="CPU use over 0.25 s")  # another training keeps one of two cores busy


def test_a_default_run_on_a_busy_machine_takes_the_free_cores_and_says_so():
    threads, message = threads_for_busy(0, 2, BUSY)
    assert threads == 1
    assert message.startswith("note: the machine is busy: other processes keep 1.0 of this run's 2 CPUs busy "
                              "(CPU use over 0.25 s), leaving about 1.0 free, so this run computes with 1 torch "
                              "thread instead of torch's default of 2, and takes more as others finish")
    assert "--threads 2 fixes the count" in message
    assert threads_for_busy(0, 8, CpuUse(8, 4.9, "a load average"))[0] == 3
    assert threads_for_busy(0, 2, CpuUse(2, 2.0, "a load average"))[0] == 1  # nothing free: one thread still


def test_asked_for_threads_stay_with_a_warning():
    threads, message = threads_for_busy(2, 2, BUSY)
    assert threads == 2
    assert message.startswith("warning: the machine is busy") and "--threads 1 would fit what is free" in message


def test_a_quiet_machine_or_one_thread_changes_nothing():
    assert threads_for_busy(0, 2, CpuUse(2, 0.1, "a load average")) == (2, None)
    assert threads_for_busy(0, 1, CpuUse(2, 1.1, "a load average")) == (1, None)  # one core free for one thread
    assert threads_for_busy(0, 1, CpuUse(2, 2.0, "a load average")) == (1, None)  # one thread: nothing to give back
    assert threads_for_busy(0, 2, None) == (2, None)  # nothing known about the machine


def test_cpu_use_counts_other_processes_busy_time(monkeypatch):
    samples = iter([(100.0, 400.0), (150.0, 500.0)])  # (busy, total) jiffies: half of 100 new ticks busy
    monkeypatch.setattr(threads_module, "_cpu_times", lambda cpus: next(samples))
    monkeypatch.setattr(threads_module.time, "sleep", lambda s: None)
    use = cpu_use()
    assert use.busy == pytest.approx(0.5 * use.cpus) and use.how == "CPU use over 0.25 s"


def test_cpu_use_reads_this_machines_proc_stat():
    use = cpu_use(0.05)
    assert use is not None and 0 <= use.busy <= use.cpus and use.free <= use.cpus


def test_a_run_lowers_its_default_threads_on_a_busy_cpu(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(train_main, "cpu_use", lambda: BUSY)
    try:
        torch.set_num_threads(2)
        assert train_main.pick_threads(0, torch.device("cpu"))[0] == 1 == torch.get_num_threads()
        torch.set_num_threads(2)
        assert train_main.pick_threads(2, torch.device("cpu"))[0] == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_threads_zero_keeps_torchs_choice_and_n_sets_it():
    before = torch.get_num_threads()
    try:
        assert apply_threads(0) == before
        assert apply_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert parse_args([]).threads == 0 and parse_args(["--threads", "3"]).threads == 3


class FakeMachine:
    """A clock, /proc/stat's (busy, total) jiffies on 2 CPUs and this process's CPU time, moved by hand."""

    def __init__(self, monkeypatch):
        self.now, self.busy, self.total, self.own = 0.0, 0.0, 0.0, 0.0
        monkeypatch.setattr(threads_module, "_cpu_times", lambda cpus: (self.busy, self.total))
        monkeypatch.setattr(threads_module.time, "process_time", lambda: self.own)
        monkeypatch.setattr(threads_module, "apply_threads", lambda n: self.applied.append(n) or n)
        self.applied = []

    def run(self, seconds: float, own_cpus: float, other_cpus: float, tick: int):
        """`seconds` pass with this process using own_cpus and others other_cpus of the 2 CPUs."""
        self.now += seconds
        self.total += 2 * seconds * tick
        self.busy += (own_cpus + other_cpus) * seconds * tick
        self.own += own_cpus * seconds


def test_the_governor_gives_threads_back_while_another_job_runs_and_takes_them_again(monkeypatch):
    machine = FakeMachine(monkeypatch)
    governor = threads_module.ThreadGovernor(2, period_s=5, clock=lambda: machine.now)
    governor.cpus = {0, 1}
    tick = governor.tick
    machine.run(3, own_cpus=1.2, other_cpus=0.8, tick=tick)  # another training has started
    assert governor() is None  # not due yet
    machine.run(3, own_cpus=1.2, other_cpus=0.8, tick=tick)
    note = governor()
    assert machine.applied == [1] and governor.threads == 1
    assert note.startswith("threads: 1 (other processes used 0.8 of this run's 2 CPUs over the last 6 s; back to 2")
    machine.run(5, own_cpus=1, other_cpus=1, tick=tick)
    assert governor() is None and machine.applied == [1]  # still busy: stays at 1
    machine.run(5, own_cpus=1, other_cpus=0.05, tick=tick)  # the other job has ended
    assert governor().startswith("threads: back to 2") and machine.applied == [1, 2]


def test_the_governor_ignores_a_little_noise(monkeypatch):
    machine = FakeMachine(monkeypatch)
    governor = threads_module.ThreadGovernor(2, period_s=5, clock=lambda: machine.now)
    governor.cpus = {0, 1}
    machine.run(6, own_cpus=1.8, other_cpus=0.2, tick=governor.tick)  # an editor, a shell
    assert governor() is None and machine.applied == []


def test_a_run_that_started_with_fewer_threads_is_not_told_it_lowered_them(monkeypatch):
    machine = FakeMachine(monkeypatch)
    governor = threads_module.ThreadGovernor(2, threads=1, period_s=5, clock=lambda: machine.now)
    governor.cpus = {0, 1}
    machine.run(6, own_cpus=1, other_cpus=1, tick=governor.tick)
    assert governor() is None and machine.applied == []
