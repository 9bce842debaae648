#!/bin/sh
# Install everything the tests need, exactly as a user would, then run the whole suite.
#
#   sh scripts/test.sh            # what CI runs (.ci/run)
#   sh scripts/test.sh -x -k lock # extra arguments go to pytest
#   sh scripts/test.sh -n 0       # one process (e.g. for --pdb)
#
# requirements.txt: the trainer, the evaluation, the studies (Ray); requirements-test.txt: pytest.
# requirements-visdom.txt: live monitoring; visdom 0.2.4 ships only as an sdist whose setup.py needs
# pkg_resources, hence the setuptools<81 build constraint.
# Debian's chromium (when this runs as root and it is missing): the visdom page rendered headless.
set -eu
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
"$python" -m pip install -q -r requirements.txt -r requirements-test.txt
PIP_CONSTRAINT=build-constraints.txt PIP_BUILD_CONSTRAINT=build-constraints.txt \
    "$python" -m pip install -q -r requirements-visdom.txt
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 && [ "${NO_CHROMIUM:-}" != 1 ]; then
        echo "scripts/test.sh: installing Debian's chromium and fonts-dejavu-core (a browser and its" \
             "dependencies) for the visdom browser test; NO_CHROMIUM=1 skips that test instead"
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-dejavu-core; } \
            || echo "chromium could not be installed: the browser test will be skipped"
    else
        echo "chromium is not installed (apt-get install chromium): the browser test will be skipped"
    fi
fi
# Test files run in parallel worker processes (pytest-xdist), one per CPU up to four, each file whole in one
# worker so that its module fixtures (an embedded Ray, the loaded dSprites) start once. Most tests wait on
# a child process or run one torch thread, so on 2 cores two workers take about 0.6 of the serial time.
status=0
"$python" -m pytest -q -n auto --maxprocesses 4 --dist loadfile "$@" || status=$?
# pytest exits 5 when it collects no test; that is a broken suite here, not a pass.
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests" >&2
fi
exit "$status"
