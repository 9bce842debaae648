"""A real training run streaming to a real visdom server, read back through visdom's client."""

import json
import logging

import pytest
from conftest import run_args

pytest.importorskip("visdom", reason="visdom is not installed (see requirements-visdom.txt)")

from test_visdom import LINE_WINDOWS, free_port, traces  # noqa: E402

from main import main  # noqa: E402

SINK = "monitoring.visdom_sink"  # the visdom sink's logger


def live_args(tmp_path, dset_dir, port: int, name: str) -> list[str]:
    args = run_args(tmp_path, dset_dir, "--max_iter", "30", "--display_step", "10", "--gather_step", "2",
                    "--objective", "B", "--model", "B", "--z_dim", "4", "--viz_name", name,
                    "--viz_port", str(port))
    args[args.index("--viz_on") + 1] = "True"
    return args


def test_thirty_iterations_fill_every_window(tmp_path, tiny_dsprites, server):
    assert main(live_args(tmp_path, tiny_dsprites, server.port, "live")) == 0
    reader = server.client()
    records = [json.loads(line) for line in (tmp_path / "outputs" / "live" / "metrics.jsonl").open()]
    assert [r["iter"] for r in records] == list(range(2, 31, 2))

    for win in LINE_WINDOWS:
        assert reader.win_exists(win, "live_lines"), win
        for name, trace in traces(reader, win, "live_lines").items():
            assert len(trace["x"]) == 15, f"{win}/{name}"
    means = traces(reader, "posterior_mean", "live_lines")
    assert list(means) == ["z0", "z1", "z2", "z3"]  # 0-based, like the traversals
    for k in range(4):  # the posterior-mean window holds means, not variances
        assert means[f"z{k}"]["y"] == pytest.approx([r["mu"][k] for r in records])
    assert traces(reader, "kl_divergence", "live_lines")["C"]["y"] == pytest.approx([r["C"] for r in records])
    assert reader.win_exists("reconstruction", "live_reconstruction")
    assert reader.win_exists("traverse_random_img", "live_traverse")
    assert (tmp_path / "outputs" / "live" / "curves" / "recon_loss.png").exists()


def test_no_server_warns_once_and_loses_nothing(tmp_path, tiny_dsprites, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(live_args(tmp_path, tiny_dsprites, free_port(), "offline")) == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == SINK and r.levelno >= logging.WARNING]
    # One for the outage, and one at the end saying what was not sent and how to send it later.
    assert len(warnings) == 2 and "visdom_server.sh" in warnings[0], warnings
    metrics = tmp_path / "outputs" / "offline" / "metrics.jsonl"
    assert warnings[1].startswith("15 points and ") and f"python replay.py {metrics}" in warnings[1]
    lines = metrics.read_text().splitlines()
    assert [json.loads(line)["iter"] for line in lines] == list(range(2, 31, 2))
