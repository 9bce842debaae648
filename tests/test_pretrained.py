"""Every shipped model (pretrained/<name>/) still scores what its result card says, from its checkpoint alone.

The card stores the headline scores at a small evaluation scale (results/card.py: CHECK_SCALE, seed 0, fp32);
this recomputes them on the generated dSprites. The tolerance covers the last bits of fp32 codes, which
differ between CPU kinds (oneDNN's kernels), moving a point across a histogram bin or a tree split.
"""

import json

import pytest
from conftest import ROOT

from results.card import card_text, check_scores, latest_eval

CARDS = sorted(path for path in (ROOT / "pretrained").glob("*/card.json") if "check" in json.loads(path.read_text()))


@pytest.mark.parametrize("card", CARDS, ids=[card.parent.name for card in CARDS])
def test_a_shipped_model_scores_what_its_card_says(card, full_dsprites):
    stored = json.loads(card.read_text())["check"]
    scores = check_scores(card.parent / "last", str(full_dsprites), stored["scale"], stored["eval_seed"])
    for key in ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "sap"):
        assert scores[key] == pytest.approx(stored["summary"][key], abs=0.02), key


def test_the_card_builder_finds_the_full_protocol_and_writes_the_card(tmp_path):
    run = tmp_path / "run"
    (run / "from_checkpoint").mkdir(parents=True)
    for name in ("eval_10_scale0.1.json", "eval_20.json", "eval_5.json", "from_checkpoint/eval_30.json"):
        (run / name).write_text("{}")
    assert latest_eval(run) == run / "from_checkpoint" / "eval_30.json"  # scale 1 only, the latest
    assert latest_eval(run, 0.1) == run / "eval_10_scale0.1.json"
    facts = {"name": "m", "title": "t", "finished": False, "iter": 5, "max_iter": 10, "command": "c", "show": "s",
             "seed": 1, "train_seconds": 7200.0, "machine": "x", "precision": "fp32", "checkpoint_mib": 1.0,
             "full": {"beta_vae": 0.9, "mig": 0.25}}
    text = card_text(facts, "table", ["curves/a.png"], ["traverse_fixed_heart.gif"])
    assert "**in progress**: iteration 5 of 10" in text and "| BetaVAE | 0.900 |" in text and "| MIG | 0.250 |" in text
    assert "2.0 h (7,200 s)" in text and "![traverse_fixed_heart.gif](traverse_fixed_heart.gif)" in text


def test_an_in_progress_card_shows_its_latest_latent_report_and_the_observations():
    facts = {"name": "m", "title": "t", "finished": False, "iter": 5, "max_iter": 10, "command": "c", "show": "s",
             "seed": 1, "train_seconds": 60.0, "machine": "x", "precision": "fp32", "checkpoint_mib": 1.0,
             "latest": {"iter": 4, "scale": 0.1, "summary": {"mig": 0.02}, "text": "z1  posY (0.12)"},
             "observations": "Two latents hold all the capacity."}
    text = card_text(facts, None, [], [])
    assert "## Latest scores (iteration 4, --eval_scale 0.1" in text and "```text\nz1  posY (0.12)\n```" in text
    assert "## Observations\n\nTwo latents hold all the capacity." in text
