#!/bin/sh
# Start a visdom server for watching training live, bound to 127.0.0.1.
#
#   sh scripts/visdom_server.sh               # then open http://localhost:8097
#   sh scripts/visdom_server.sh --port 8098   # another port
#   sh scripts/visdom_server.sh --help        # all options
#
# Works offline: the first run fetches the web page's JavaScript/CSS/fonts
# from the npm registry (needs `npm`) into scripts/visdom_static/ (git-ignored);
# later runs reuse them and need no network. The server is started without
# visdom's CDN download (which crashes without internet).
# Set PYTHON=/path/to/python to pick the interpreter (default: python3).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
python=${PYTHON:-python3}
if ! "$python" -c "import visdom, tornado" 2>/dev/null; then
    # visdom ships as an sdist needing pkg_resources: build it with setuptools<81.
    echo "visdom is not installed: installing $root/requirements-visdom.txt (once)."
    PIP_CONSTRAINT="$root/build-constraints.txt" PIP_BUILD_CONSTRAINT="$root/build-constraints.txt" \
        "$python" -m pip install -r "$root/requirements-visdom.txt"
fi
exec "$python" "$here/visdom_server.py" "$@"
