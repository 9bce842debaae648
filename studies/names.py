"""The study file's vocabulary: its keys, the flags the sweep sets itself, what a name may be."""

from pathlib import Path

STUDIES = Path(__file__).resolve().parent  # the shipped study files
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
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"  # a study's name and a scale's: plain folder names
