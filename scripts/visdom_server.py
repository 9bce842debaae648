#!/usr/bin/env python3
"""Start a visdom server on 127.0.0.1 that works without internet access.

    sh scripts/visdom_server.sh                  # http://localhost:8097
    sh scripts/visdom_server.sh --port 8098
    python scripts/visdom_server.py --fetch-only # only fetch the page assets

http://localhost:8097 opens the lines environment of the most recently updated run; the page's
Environment box lists every run (`<viz_name>_lines`, `_reconstruction`, `_traverse`), and the
start-up message prints their addresses. Ctrl-C stops the server.

`python -m visdom.server` downloads the page's JavaScript, CSS and fonts from
CDNs at every start and crashes when it cannot reach them.  This helper
instead fetches the same files, pinned to the versions visdom 0.2.4 asks
for, once from the npm registry (with the `npm` client) into
scripts/visdom_static/, and points visdom's static file handler at that
folder.  Later starts need no network at all.  The training data itself
goes through visdom's HTTP API, which works even while the assets are
missing (`--no-fetch`), so tests and training never wait on npm.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8097
DEFAULT_STATIC_DIR = Path(__file__).resolve().parent / "visdom_static"
HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = (
    f"Install it in {ROOT} with: PIP_CONSTRAINT=build-constraints.txt "
    "PIP_BUILD_CONSTRAINT=build-constraints.txt pip install -r requirements-visdom.txt "
    "(or start the server with `sh scripts/visdom_server.sh`, which does that)"
)
RUN_SUFFIX = "_lines"  # the env of a run's curves, named <viz_name>_lines by the training logger


@dataclass(frozen=True)
class Asset:
    """One file of an npm package, saved under the name visdom's page loads."""

    package: str
    version: str
    member: str  # path inside the package tarball, below 'package/'
    target: str  # path below the static dir, as used by visdom's index.html

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"


def _bootstrap(member: str, target: str) -> Asset:
    return Asset("bootstrap", "3.3.7", member, target)


# Mirrors visdom 0.2.4's visdom/server/build.py (its CDN list), with each URL
# mapped to the npm package that publishes the same file.
ASSETS: tuple[Asset, ...] = (
    Asset("jquery", "3.1.1", "dist/jquery.min.js", "js/jquery.min.js"),
    _bootstrap("dist/js/bootstrap.min.js", "js/bootstrap.min.js"),
    _bootstrap("dist/css/bootstrap.min.css", "css/bootstrap.min.css"),
    Asset("react", "16.2.0", "umd/react.production.min.js", "js/react-react.min.js"),
    Asset("react-dom", "16.2.0", "umd/react-dom.production.min.js", "js/react-dom.min.js"),
    Asset("react-modal", "3.1.10", "dist/react-modal.min.js", "js/react-modal.min.js"),
    # visdom takes plotly-2.11.1.min.js from cdn.plot.ly; this is the same build.
    Asset("plotly.js-dist-min", "2.11.1", "plotly.min.js", "js/plotly-plotly.min.js"),
    Asset("sjcl", "1.0.7", "sjcl.js", "js/sjcl.js"),
    Asset("layout-bin-packer", "1.4.0", "dist/layout-bin-packer.js", "js/layout_bin_packer.js"),
    Asset(
        "layout-bin-packer",
        "1.4.0",
        "dist/layout-bin-packer.js.map",
        "js/layout-bin-packer.js.map",
    ),
    # d3js.org/d3.v3.min.js and d3-selection-multi.v1.js: last releases of those lines.
    Asset("d3", "3.5.17", "d3.min.js", "js/d3.v3.min.js"),
    Asset(
        "d3-selection-multi",
        "1.0.1",
        "build/d3-selection-multi.js",
        "js/d3-selection-multi.v1.js",
    ),
    Asset("save-svg-as-png", "1.4.17", "lib/saveSvgAsPng.js", "js/saveSvgAsPng.js"),
    Asset("react-resizable", "1.4.6", "css/styles.css", "css/react-resizable-styles.css"),
    Asset("react-grid-layout", "0.16.3", "css/styles.css", "css/react-grid-layout-styles.css"),
    Asset("classnames", "2.2.5", "index.js", "fonts/classnames"),
    # bootstrap.min.css loads these from ../fonts/.
    *(
        _bootstrap(
            f"dist/fonts/glyphicons-halflings-regular.{ext}",
            f"fonts/glyphicons-halflings-regular.{ext}",
        )
        for ext in ("eot", "woff2", "woff", "ttf", "svg")
    ),
)

# MathJax loads its extensions, output jax and fonts at run time relative to
# MathJax.js, so the page needs the tree, not only the two files index.html
# names.  The unminified copies and the alternative font families are skipped
# (about 27 MB of the package's 60 MB are kept).
MATHJAX_VERSION = "2.7.5"
MATHJAX_TARGET = f"js/mathjax/{MATHJAX_VERSION}"


def _mathjax_keeps(relative: str) -> bool:
    if relative.startswith("unpacked/") or "/png/" in relative:
        return False
    return not relative.startswith("fonts/") or relative.startswith("fonts/HTML-CSS/TeX/")


# ---------------------------------------------------------------- assets


def missing_assets(static_dir: Path) -> list[str]:
    """The npm specs (name@version) whose files are not in static_dir yet."""
    specs = {a.spec for a in ASSETS if not (static_dir / a.target).is_file()}
    if not (static_dir / MATHJAX_TARGET / "MathJax.js").is_file():
        specs.add(f"mathjax@{MATHJAX_VERSION}")
    return sorted(specs)


def _npm_pack(specs: list[str], dest: Path) -> dict[str, Path]:
    """Download the package tarballs with `npm pack`; map spec -> tarball.

    `npm pack` fetches a package exactly as published (integrity-checked)
    without installing dependencies or running any package scripts.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "`npm` was not found. It is needed once, to fetch the page assets "
            "from the npm registry: apt-get install -y nodejs npm (or any "
            "Node.js install), then run this command again. To start the "
            "server without the web page (API only) pass --no-fetch."
        )
    command = [npm, "pack", "--json", "--pack-destination", str(dest), *specs]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed:\n{result.stderr.strip()}")
    packed = json.loads(result.stdout)
    return {f"{p['name']}@{p['version']}": dest / p["filename"] for p in packed}


def _member(tar: tarfile.TarFile, path: str) -> bytes:
    handle = tar.extractfile(f"package/{path}")
    if handle is None:
        raise RuntimeError(f"{tar.name}: package/{path} is not a regular file")
    return handle.read()


def _write_atomic(path: Path, data: bytes) -> None:
    # Write then rename, so an interrupted fetch never leaves a truncated
    # file that a later run would take for complete.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(data)
    partial.replace(path)


def _install_files(tarball: Path, spec: str, static_dir: Path) -> None:
    with tarfile.open(tarball) as tar:
        for asset in ASSETS:
            if asset.spec == spec:
                _write_atomic(static_dir / asset.target, _member(tar, asset.member))


def _install_mathjax(tarball: Path, static_dir: Path) -> None:
    target = static_dir / MATHJAX_TARGET
    for stale in static_dir.glob("mathjax-*"):  # left by an interrupted fetch
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix="mathjax-", dir=static_dir))
    with tarfile.open(tarball) as tar:
        for info in tar.getmembers():
            relative = info.name.split("/", 1)[1]
            if ".." in Path(relative).parts:
                continue  # never write outside the target tree
            if info.isfile() and _mathjax_keeps(relative):
                _write_atomic(staging / relative, _member(tar, relative))
    # Swap the finished tree in last: MathJax.js present means complete.
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.replace(target)


def fetch_assets(static_dir: Path) -> None:
    """Fetch whatever is missing from the npm registry; no-op when complete."""
    specs = missing_assets(static_dir)
    if not specs:
        return
    print(f"Fetching {len(specs)} visdom page packages from the npm registry "
          f"into {static_dir} (once): {', '.join(specs)}", flush=True)
    static_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="visdom-npm-") as tmp:
        tarballs = _npm_pack(specs, Path(tmp))
        for spec in specs:
            if spec.startswith("mathjax@"):
                _install_mathjax(tarballs[spec], static_dir)
            else:
                _install_files(tarballs[spec], spec, static_dir)
    print("Page assets are in place.", flush=True)


def sync_visdom_static(static_dir: Path) -> None:
    """Copy visdom's own page files (main.js, style.css, ...) next to the assets.

    Tornado serves one static folder, so visdom's bundled files must sit in
    the same tree as the fetched ones.  Copying when size or mtime differ
    keeps them in step with an upgraded visdom.
    """
    source = Path(importlib.util.find_spec("visdom").origin).parent / "static"
    for path in source.rglob("*"):
        if not path.is_file():
            continue
        dest = static_dir / path.relative_to(source)
        stat = path.stat()
        if dest.is_file() and dest.stat().st_size == stat.st_size and (
            int(dest.stat().st_mtime) == int(stat.st_mtime)
        ):
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)


# ---------------------------------------------------------------- server


def _check_tornado() -> None:
    import tornado

    if tornado.version_info >= (6, 6):
        print(
            f"WARNING: tornado {tornado.version} is installed; visdom 0.2.4's "
            "page answers 403 Forbidden with tornado>=6.6 (the data API still "
            "works). Fix: pip install 'tornado>=6.5,<6.6'",
            file=sys.stderr,
            flush=True,
        )


def runs(env_path: Path) -> list[str]:
    """The runs' lines envs saved in env_path, most recently updated first."""
    saved = [p for p in env_path.glob(f"*{RUN_SUFFIX}.json") if p.is_file()]
    return [p.stem for p in sorted(saved, key=lambda p: p.stat().st_mtime, reverse=True)]


def _handlers():
    """Two tornado handlers that adjust visdom's page (imported late: visdom may be missing)."""
    import tornado.web
    from visdom.server.handlers.web_handlers import IndexHandler

    class QuietStaticFiles(tornado.web.StaticFileHandler):
        @classmethod
        def get_version(cls, settings, path):
            # index.html links ../user/style.css (the user's CSS, served by a visdom handler, not
            # a static file) through static_url, which would log "Could not open static file" at
            # every page load while hashing a file that is not there.
            if path.startswith("../user/"):
                return None
            return super().get_version(settings, path)

    class LatestRun(IndexHandler):
        """The bare address opens the most recently updated run's curves."""

        def get(self, args="", **kwargs):
            latest = runs(Path(self.env_path))
            if latest:
                self.redirect(f"/env/{latest[0]}")
            else:
                super().get(args, **kwargs)

    return QuietStaticFiles, LatestRun


def serve(port: int, env_path: Path, static_dir: Path | None) -> None:
    """Run the visdom server in this process until it is killed or Ctrl-C."""
    import tornado.ioloop
    import visdom.server.app as visdom_app
    from tornado.routing import PathMatches, Rule

    _check_tornado()
    quiet_static, latest_run = _handlers()
    # visdom reads these module-level settings when the Application is built: the static folder
    # serves the fetched assets without writing into site-packages.
    if static_dir is not None:
        visdom_app.tornado_settings["static_path"] = str(static_dir)
    visdom_app.tornado_settings["static_handler_class"] = quiet_static
    env_path.mkdir(parents=True, exist_ok=True)
    # visdom's own start_server, without the CDN download that `python -m visdom.server` runs
    # first, listening on 127.0.0.1 only.
    app = visdom_app.Application(port=port, base_url="", env_path=str(env_path) + os.sep)
    # The bare address first; visdom's catch-all page handler stays behind it.
    router = app.wildcard_router
    router.rules.insert(0, router.process_rule(Rule(PathMatches(r"/"), latest_run, {"app": app})))
    try:
        app.listen(port, max_buffer_size=1024**3, address=HOST)
    except OSError as err:
        sys.exit(
            f"error: cannot listen on {HOST}:{port}: {err.strerror}. Is another "
            f"visdom server already running there (open http://localhost:{port})? "
            "Pick another port with --port."
        )
    print(f"visdom server ready: open http://localhost:{port} (envs saved in {env_path}; Ctrl-C stops it)",
          flush=True)
    found = runs(env_path)
    if found:
        print(f"{len(found)} runs here; http://localhost:{port} opens the most recent, the page's Environment "
              "box lists all:", flush=True)
        for env in found[:10]:
            print(f"  http://localhost:{port}/env/{env}", flush=True)
    tornado.ioloop.IOLoop.current().start()


# ---------------------------------------------------- used by the tests


def launch(port: int, env_path: Path, log_file: Path, *extra: str) -> subprocess.Popen:
    """Start this script as a background server process writing its output to log_file."""
    command = [sys.executable, str(Path(__file__).resolve()), "--port", str(port),
               "--env-path", str(env_path), *extra]
    # A file, not a pipe: nobody reads a pipe while the server runs, and a full one would
    # block the server.
    with open(log_file, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def wait_until_up(port: int, process: subprocess.Popen | None = None, log_file: Path | None = None,
                  timeout: float = 60.0) -> None:
    """Block until the server on port answers its API, or raise RuntimeError."""
    deadline = time.monotonic() + timeout
    url = f"http://{HOST}:{port}/env_state"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            output = log_file.read_text(errors="replace") if log_file else ""
            raise RuntimeError(f"visdom server exited with code {process.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(url, data=b"{}", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:  # URLError is an OSError: not listening yet
            time.sleep(0.1)
    raise RuntimeError(f"visdom server on port {port} not up after {timeout:.0f} s")


# ------------------------------------------------------------------ main


def port_number(value: str) -> int:
    """argparse type: a TCP port, 1 to 65535 (as utils.port_number; this script imports nothing of the
    project, so that it starts without torch)."""
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {value!r}")
    return port


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                        help=f"port on 127.0.0.1 (default {DEFAULT_PORT})")
    parser.add_argument("--env-path", type=Path, default=Path.home() / ".visdom",
                        help="where the server keeps saved envs (default ~/.visdom)")
    parser.add_argument("--static-dir", type=Path, default=DEFAULT_STATIC_DIR,
                        help="folder for the page assets (default scripts/visdom_static)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--fetch-only", action="store_true",
                      help="fetch the page assets if missing, then exit")
    mode.add_argument("--no-fetch", action="store_true",
                      help="never contact npm; serve whatever assets are present")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    try:
        _run(args)
    except KeyboardInterrupt:  # Ctrl-C is how a person stops the server: no traceback
        print("\nvisdom server stopped.", flush=True)


def _run(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("visdom") is None:
        sys.exit(f"error: visdom is not installed. {INSTALL_HINT}")
    static_dir = args.static_dir.resolve()
    if not args.no_fetch:
        try:
            fetch_assets(static_dir)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
            sys.exit(f"error: could not fetch the visdom page assets: {err}")
    if args.fetch_only:
        print(f"Page assets are complete in {static_dir}.")
        return
    missing = missing_assets(static_dir)
    if missing:
        print(f"note: page assets missing ({', '.join(missing)}): the page at "
              f"http://localhost:{args.port} stays blank, but training data is still "
              "received. Run once without --no-fetch to fetch them.", flush=True)
    sync_visdom_static(static_dir)
    serve(args.port, args.env_path.expanduser().resolve(), static_dir)


if __name__ == "__main__":
    main()
