"""--tensorboard True: the run's records, pictures and scores, read back with TensorBoard's own reader."""

import numpy as np
import pytest
from conftest import run_args

from main import main

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="tensorboard is in requirements.txt")


def read_events(folder):
    events = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_a_run_writes_its_curves_and_pictures_as_tensorboard_events(tmp_path, tiny_dsprites):
    argv = run_args(tmp_path, tiny_dsprites, "--viz_name", "tb", "--tensorboard", "True", "--max_iter", "4",
                    "--gather_step", "2", "--display_step", "4", "--objective", "B", "--z_dim", "3",
                    "--precision", "fp32")
    assert main(argv) == 0
    events = read_events(tmp_path / "outputs" / "tb" / "tensorboard")
    tags = events.Tags()
    assert {"loss", "recon_loss", "total_kld", "C", "kld/z0", "kld/z2", "var/z1"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [2, 4]
    # the same numbers as metrics.jsonl
    import json

    records = [json.loads(line) for line in (tmp_path / "outputs" / "tb" / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("recon_loss")] == pytest.approx([r["recon_loss"] for r in records])
    assert {"reconstruction", "traverse_random_img"} <= set(tags["images"])


def test_scores_and_heatmaps_become_tensorboard_events(tmp_path):
    from monitoring.tensorboard_sink import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path)
    logger.scalars({"iter": 7, "eval": {"beta_vae": 0.75, "mig": "nan"}})
    logger.heatmap(7, "dci_importance", np.eye(2), ["z0", "z1"], ["posX", "posY"])
    logger.close()
    events = read_events(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("eval/beta_vae")] == [(7, 0.75)]
    assert np.isnan(events.Scalars("eval/mig")[0].value)
    assert "heatmap/dci_importance/text_summary" in events.Tags()["tensors"]


def test_a_resumed_run_hides_the_stopped_runs_later_events(tmp_path):
    from monitoring.tensorboard_sink import TensorBoardLogger

    first = TensorBoardLogger(tmp_path)
    for step in (1, 2, 3):
        first.scalars({"iter": step, "loss": float(step)})
    first.close()
    resumed = TensorBoardLogger(tmp_path, resume_step=2)  # the checkpoint was at iteration 2
    resumed.scalars({"iter": 3, "loss": 30.0})
    resumed.close()
    assert [(e.step, e.value) for e in read_events(tmp_path).Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 30.0)]
