"""The tool as an installed package (`pip install .`, see pyproject.toml): `betavae`, with the console commands
`betavae` (main.py), `betavae-sweep` (sweep.py) and `betavae-report` (study_report.py).

The modules import each other by their top-level names (`import main`, `from utils import ...`), as
`python main.py` in a checkout does, so importing the package puts its folder first on sys.path. In a
notebook: `import betavae` and then `from storage.resume import method_from_checkpoint`, say.
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


def train() -> None:
    """The `betavae` command: main.py's flags."""
    import main

    sys.exit(main.main())


def sweep() -> None:
    """The `betavae-sweep` command: sweep.py's flags."""
    from studies.runner import cli

    cli()


def report() -> None:
    """The `betavae-report` command: study_report.py's flags."""
    from studies.report import main

    sys.exit(main())
