#!/usr/bin/env python3
"""Start a visdom server on 127.0.0.1 that works without internet access.

    sh scripts/visdom_server.sh                  # http://localhost:8097
    sh scripts/visdom_server.sh --port 8098
    python scripts/visdom_server.py --fetch-only # only fetch the page assets

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
INSTALL_HINT = (
    "pip install 'visdom==0.2.4' 'tornado>=6.5,<6.6' "
    "(see the README: visdom's sdist needs setuptools<81 to build)"
)


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


def serve(port: int, env_path: Path, static_dir: Path | None) -> None:
    """Run the visdom server in this process until it is killed."""
    import visdom.server.app as visdom_app
    from visdom.server.run_server import start_server

    _check_tornado()
    if static_dir is not None:
        # visdom reads the static folder from this module-level dict when the
        # Application is built; pointing it here serves the fetched assets
        # without writing into site-packages.
        visdom_app.tornado_settings["static_path"] = str(static_dir)
    env_path.mkdir(parents=True, exist_ok=True)
    try:
        # start_server skips the CDN download that `python -m visdom.server`
        # runs first; bind_local keeps the server on 127.0.0.1 only.
        start_server(
            port=port,
            hostname=HOST,
            base_url="",
            env_path=str(env_path) + os.sep,
            bind_local=True,
            print_func=lambda p: print(
                f"visdom server ready: open http://localhost:{p} "
                f"(envs saved in {env_path}; Ctrl-C stops it)",
                flush=True,
            ),
        )
    except OSError as err:
        sys.exit(
            f"error: cannot listen on {HOST}:{port}: {err.strerror}. Is another "
            f"visdom server already running there (open http://localhost:{port})? "
            "Pick another port with --port."
        )


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


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
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
