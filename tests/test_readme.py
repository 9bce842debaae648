"""Every command the README and docs/ show still runs: main.py's flags parse, scripts and study files exist and
load, modules named with `python -m` import. (What they do is tested elsewhere; this catches a moved or
renamed command.)"""

import importlib.util
import re
import shlex

import pytest
from conftest import ROOT
from test_cli import script_argv

from main import parse_args
from studies.spec import load_study

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "pretrained").glob("*/README.md"))]
COMMAND = re.compile(r"(?:^|`|\s)((?:python3? |sh |betavae)[^`\n|]*)")


def commands() -> list[tuple[str, str]]:
    """(file, command) for every command line in a code block or in backticks."""
    found = []
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            for match in COMMAND.finditer(line):
                command = match.group(1).split(" #")[0].split(" && ")[0].strip().rstrip(".,;:)")
                if re.match(r"(python3? \S+\.py|python -m \S+|sh scripts/\S+)", command):
                    found.append((doc.name, command))
    return found


def check(command: str) -> None:
    words = shlex.split(command.replace("<", "").replace(">", ""))
    if words[0] == "sh":
        script = ROOT / words[1]
        assert script.is_file(), f"{words[1]} does not exist"
        if script.name.startswith("run_"):  # a run script: its main.py flags and the ones passed through
            parse_args(script_argv(script.name) + words[2:])
    elif words[1] == "-m":
        assert importlib.util.find_spec(words[2]) is not None, f"no module {words[2]}"
    else:
        assert (ROOT / words[1]).is_file(), f"{words[1]} does not exist"
        if words[1] == "main.py" and "--help" not in words:
            parse_args(words[2:])
        if words[1] == "sweep.py" and words[2:3] and words[2].endswith(".yaml"):
            scale = words[words.index("--scale") + 1] if "--scale" in words else "full"
            load_study(ROOT / words[2], scale)


@pytest.mark.parametrize("where, command", commands())
def test_every_documented_command_runs(where, command):
    check(command)


def test_the_readme_shows_the_quick_start_and_the_test_command():
    shown = [command for where, command in commands() if where == "README.md"]
    assert "sh scripts/run_dsprites_B.sh" in shown and "sh scripts/test.sh" in shown
    assert len(shown) >= 8
