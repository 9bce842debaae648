"""A study's results.csv, tables and plots from its finished trials, without Ray (studies/report.py).

    python study_report.py sweeps/higgins2017_fig6
"""

import sys

from studies.report import main

if __name__ == "__main__":
    sys.exit(main())
