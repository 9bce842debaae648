"""Replay a run's metrics.jsonl into visdom: the curves of a finished or remote run, or of a
run whose visdom server was not up.

    python replay.py outputs/<viz_name>/metrics.jsonl --viz_name <viz_name> --port 8097

The line windows of `<viz_name>_lines` are replaced (pass --append to add to them instead).
The latent count and the objective are read from the records. Pictures are not in
metrics.jsonl and are not replayed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from plots import read_metrics


def _z_dim(records: list[dict]) -> int:
    return max((len(r[k]) for r in records for k in ("kld", "mu", "var") if isinstance(r.get(k), list)), default=0)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Replay a metrics.jsonl into a visdom server.")
    parser.add_argument("metrics", type=Path, help="outputs/<viz_name>/metrics.jsonl")
    parser.add_argument("--viz_name", help="env prefix (default: the metrics file's folder name)")
    parser.add_argument("--server", default="http://localhost")
    parser.add_argument("--port", type=int, default=8097)
    parser.add_argument("--append", action="store_true", help="append to the windows instead of replacing them")
    parser.add_argument("--chunk", type=int, default=1000, help="records sent per request batch")
    return parser.parse_args(argv)


def replay(metrics: Path, viz_name: str, server: str = "http://localhost", port: int = 8097,
           append: bool = False, chunk: int = 1000) -> int:
    """Send every record of metrics to visdom; return how many were replayed.

    Raises RuntimeError when the file has no records or the server cannot be reached.
    """
    records = read_metrics(metrics)
    if not records:
        raise RuntimeError(f"{metrics} is missing or has no records")
    from viz_visdom import VisdomLogger  # needs visdom; imported here so --help works without it

    objective = "B" if any("C" in r for r in records) else "H"
    logger = VisdomLogger(viz_name, server=server, port=port, z_dim=_z_dim(records), objective=objective)
    try:
        if not logger.connected:
            raise RuntimeError(f"no visdom server at {server}:{port} (start one: sh scripts/visdom_server.sh)")
        if not append:
            logger.clear_lines()
        for i, record in enumerate(records, start=1):
            logger.scalars(record)
            if i % chunk == 0 or i == len(records):
                logger.flush(int(record["iter"]))
        if not logger.connected:
            raise RuntimeError(f"the visdom server at {server}:{port} went away during the replay")
    finally:
        logger.close()
    return len(records)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    viz_name = args.viz_name or args.metrics.resolve().parent.name
    try:
        count = replay(args.metrics, viz_name, args.server, args.port, args.append, max(args.chunk, 1))
    except RuntimeError as err:
        sys.exit(f"error: {err}")
    print(f"replayed {count} records into env {viz_name}_lines at {args.server}:{args.port}")


if __name__ == "__main__":
    main()
