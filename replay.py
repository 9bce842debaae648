"""Replay a run's metrics.jsonl into visdom (monitoring/replay.py; `--help` for its flags).

    python replay.py outputs/dsprites_B
"""

import sys

from monitoring.replay import main

if __name__ == "__main__":
    sys.exit(main())
