"""`pip install .`: a wheel built from the checkout installs the package `betavae` and its three commands."""

import shutil
import subprocess
import sys
import venv

import pytest
from conftest import ROOT

SKIP = shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "data", "outputs", "checkpoints",
                              "sweeps", "pretrained", ".venv", ".pytest_cache", ".ruff_cache", "visdom_static")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv that sees this interpreter's packages (the dependencies) and has only the wheel installed."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # a copy, so the build's own folders (build/, *.egg-info) stay out of the checkout
    shutil.copytree(ROOT, source, ignore=SKIP)
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=300)
    env_dir = tmp / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    wheel = next(wheels.glob("betavae-*.whl"))
    # this interpreter's pip installs the wheel into the venv (pip --python, pip >= 22.3)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return env_dir / "bin", tmp


@pytest.mark.parametrize("command, words", [("betavae", ["--objective", "--eval_metrics", "--tensorboard"]),
                                            ("betavae-sweep", ["--scale", "--only", "--address"]),
                                            ("betavae-report", ["study_dir"])])
def test_each_installed_command_runs_from_anywhere(installed, command, words):
    bin_dir, cwd = installed
    done = subprocess.run([str(bin_dir / command), "--help"], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {command}") and all(word in done.stdout for word in words)


def test_the_installed_package_holds_the_code_and_the_shipped_studies(installed):
    bin_dir, cwd = installed
    script = ("import betavae.cli, pathlib; from studies.names import STUDIES; import main, solver; "
              "print(pathlib.Path(main.__file__).parent == pathlib.Path(betavae.cli.__file__).parent, "
              "sorted(p.name for p in STUDIES.glob('*.yaml')))")
    done = subprocess.run([str(bin_dir / "python"), "-c", script], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True") and "higgins2017_fig6.yaml" in done.stdout
