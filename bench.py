"""Benchmarks: training speed against the reference pipeline (benchmarks/training.py; `--help` for its flags).

    python bench.py --configs ref-B,B      # dSprites B, ours against the reference pipeline
    python -m benchmarks.evaluation        # the evaluation protocol's metric time
    python -m benchmarks.contention        # two trainings on one machine
    python -m benchmarks.denormals         # a trained model's step, subnormals kept and flushed
"""

import sys

from benchmarks.training import main

if __name__ == "__main__":
    sys.exit(main())
