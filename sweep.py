"""Studies: run a study file's trials on Ray (studies/runner.py; `--help` for its flags).

    python sweep.py studies/higgins2017_fig6.yaml --scale cpu
"""

from studies.runner import cli

if __name__ == "__main__":
    cli()
