"""Replay a run's metrics.jsonl into visdom: the curves of a finished or remote run, or of a
run whose visdom server was not up.

    python replay.py outputs/<viz_name>/metrics.jsonl --viz_name <viz_name> --port 8097

The line windows of `<viz_name>_lines` are redrawn from the file (to combine several logs,
concatenate them first). Windows adapt to the records, as in training. Then the windows are read
back from the server and the points it holds are reported; fewer than sent is an error.
Unreadable lines are skipped and counted. Pictures are not in metrics.jsonl and are not replayed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from monitoring.records import TOP_LATENTS, read_metrics
from utils import port_number


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Replay a metrics.jsonl into a visdom server.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("metrics", type=Path, help="outputs/<viz_name>/metrics.jsonl")
    parser.add_argument("--viz_name", help="env prefix (default: the metrics file's folder name)")
    parser.add_argument("--server", default="http://localhost")
    parser.add_argument("--port", type=port_number, default=8097)
    parser.add_argument("--chunk", type=int, default=5000, help="points per request")
    parser.add_argument("--top_latents", type=int, default=TOP_LATENTS,
                        help="latents drawn one by one in per-latent windows; the rest as their mean")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server")
    return parser.parse_args(argv)


def replay(metrics: Path, viz_name: str, server: str = "http://localhost", port: int = 8097, chunk: int = 5000,
           top_latents: int = TOP_LATENTS, timeout: float = 120.0) -> tuple[int, int, dict[str, dict[str, int]]]:
    """Send every readable record of metrics to visdom and read the windows back.

    Returns (records sent, unreadable lines skipped, {window: {series: points the server holds}}).
    Raises RuntimeError when the file has no records, the server cannot be reached, or the server
    holds fewer points than were sent.
    """
    records, unreadable = read_metrics(metrics)
    if not records:
        extra = f" ({unreadable} unreadable lines)" if unreadable else ""
        raise RuntimeError(f"{metrics} is missing or has no readable records{extra}")
    from monitoring.visdom_sink import VisdomLogger, read_back  # needs visdom; imported here so --help works without it

    logger = VisdomLogger(viz_name, server=server, port=port, history=records, top_latents=top_latents,
                          chunk=chunk, close_wait=timeout)
    try:
        sent = logger.drain(timeout)
    finally:
        logger.close()
    address = f"{server}:{port}"
    if not sent:
        if logger.connected:
            raise RuntimeError(f"the visdom server at {address} did not take every point within {timeout:g} s")
        raise RuntimeError(f"no visdom server answers at {address} (start one: sh scripts/visdom_server.sh "
                           f"--port {port})")
    stored = read_back(server, port, f"{viz_name}_lines")
    for window, series in logger.window_points().items():
        for name, count in series.items():
            held = stored.get(window, {}).get(name, 0)
            if held < count:
                raise RuntimeError(f"the visdom server at {address} holds {held} of the {count} points sent to "
                                   f"{window!r}/{name!r}")
    return len(records), unreadable, stored


def _summary(stored: dict[str, dict[str, int]]) -> str:
    parts = []
    for window, series in stored.items():
        counts = set(series.values())
        if len(counts) == 1:
            parts.append(f"{window}: {counts.pop()} points x {len(series)} series")
        else:
            parts.append(f"{window}: " + ", ".join(f"{name} {count}" for name, count in series.items()))
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    # The logger's own outage warnings would repeat what the error below says.
    logging.getLogger("monitoring.visdom_sink").setLevel(logging.ERROR)
    viz_name = args.viz_name or args.metrics.resolve().parent.name
    try:
        count, unreadable, stored = replay(args.metrics, viz_name, args.server, args.port, max(args.chunk, 1),
                                           max(args.top_latents, 1), args.timeout)
    except RuntimeError as err:
        sys.exit(f"error: {err}")
    skipped = f" (skipped {unreadable} unreadable line{'s' * (unreadable != 1)})" if unreadable else ""
    print(f"replayed {count} records{skipped} into env {viz_name}_lines at {args.server}:{args.port}; "
          f"the server holds {_summary(stored)}")


if __name__ == "__main__":
    main()
