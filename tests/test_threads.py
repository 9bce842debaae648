"""--threads and the busy-machine warning (hardware/threads.py)."""

import torch

from hardware.threads import apply_threads, busy_warning
from main import parse_args


def test_a_busy_machine_is_named_with_the_threads_that_would_fit():
    message = busy_warning(2, load=1.9, cpus=2)  # another training already keeps both cores busy
    assert message is not None
    assert "load average of 1.9 on 2 logical CPUs leaves about 0.1 free for this run's 2 torch threads" in message
    assert "--threads 1 would fit" in message
    assert "--threads 3 would fit" in busy_warning(8, load=4.2, cpus=8)


def test_a_quiet_machine_gets_no_warning():
    assert busy_warning(2, load=0.1, cpus=2) is None
    assert busy_warning(1, load=0.9, cpus=2) is None  # one core free for one thread


def test_threads_zero_keeps_torchs_choice_and_n_sets_it():
    before = torch.get_num_threads()
    try:
        assert apply_threads(0) == before
        assert apply_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert parse_args([]).threads == 0 and parse_args(["--threads", "3"]).threads == 3
