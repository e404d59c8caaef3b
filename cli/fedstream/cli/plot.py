"""`fedstream plot A/metrics.jsonl B/metrics.jsonl -o runs.png`: runs side by side.

Four panels: test accuracy and training loss (log scale), each against round and against
wall time.
Needs matplotlib (`pip install fedstream[plot]`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PANELS = [("test_acc", "round", "test accuracy"), ("test_acc", "elapsed_s", "test accuracy"),
          ("train_loss", "round", "training loss"), ("train_loss", "elapsed_s", "training loss")]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("metrics", nargs="+", help="metrics.jsonl files written by run/simulate")
    p.add_argument("-o", "--output", default="metrics.png", help="PNG to write")
    p.add_argument("--log-x", action="store_true",
                   help="logarithmic round and time axes (runs of 20 and 1500 rounds together)")
    p.add_argument("--acc-from", type=float, default=None,
                   help="lowest test accuracy shown, to see the last percent (e.g. 0.9)")


def read_rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def label_of(path: str, rows: list[dict] = ()) -> str:
    """The run's name; a run whose privacy randomness was seeded says it is not private."""
    p = Path(path)
    name = p.parent.name if p.name == "metrics.jsonl" else p.stem
    guarantee = next((r["dp_guarantee"] for r in rows if "dp_guarantee" in r), None)
    return name if guarantee is None else f"{name} ({guarantee})"


def plot(paths: list[str], output: str, *, log_x: bool = False,
         acc_from: float | None = None) -> str:
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError("plotting needs matplotlib: pip install 'fedstream[plot]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for path in paths:
        rows = read_rows(path)
        for ax, (y, x, ylabel) in zip(axes.flat, PANELS):
            points = [(r[x], r[y]) for r in rows if y in r and x in r]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="." if len(points) < 30 else None,
                        label=label_of(path, rows))
            ax.set_xlabel("wall time (s)" if x == "elapsed_s" else "round")
            ax.set_ylabel(ylabel)
            if log_x:
                ax.set_xscale("log")
            if y == "train_loss":
                ax.set_yscale("log")  # losses span decades, and spikes would flatten the rest
            if y == "test_acc" and acc_from is not None:
                ax.set_ylim(acc_from, 1.0)
            ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output
