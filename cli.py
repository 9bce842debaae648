"""The installed commands (`pip install .`, see pyproject.toml): `betavae` (main.py's flags), `betavae-sweep`
(sweep.py's) and `betavae-report` (study_report.py's).

Installed, this folder is the namespace package `betavae`. Its modules import each other by their top-level
names (`import main`, `from utils import ...`), as `python main.py` in a checkout does, so importing this
module puts the folder first on sys.path. In a notebook: `import betavae.cli`, then for example
`from storage.resume import method_from_checkpoint`. (The checkout has no `__init__.py`: one would make
pytest import the repository itself as a package named after its folder.)
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
