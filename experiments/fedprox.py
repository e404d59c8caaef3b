"""The FedProx paper's comparison on Synthetic(alpha, beta), from the committed runs
`fedprox_syn<data>_<algorithm>_s<stragglers>` (`python experiments/run.py NAME...`):

    python experiments/fedprox.py            # prints the table experiments/README.md shows
    python experiments/fedprox.py --plot experiments/results/fedprox.png

Per cell (data set x share of stragglers) it compares FedAvg (stragglers dropped), FedProx
mu=0 and FedProx mu=1 (partial work kept) on the test accuracy of the last 20 rounds (its
mean: where a run ends up) and on the mean change of test accuracy from one round to the
next over rounds 21-200 (how much it oscillates: the paper's "stability"). The paper's
qualitative claim holds in a cell when FedProx mu=1 ends above FedAvg and oscillates less.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fedstream.cli.plot import read_rows

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = {"iid": "Synthetic-IID", "0_0": "Synthetic(0,0)", "05_05": "Synthetic(0.5,0.5)",
            "1_1": "Synthetic(1,1)"}
STRAGGLERS = (0, 50, 90)
ALGORITHMS = {"fedavg": "FedAvg", "fedprox0": "FedProx mu=0", "fedprox1": "FedProx mu=1"}


def run_name(data: str, algorithm: str, stragglers: int) -> str:
    if stragglers == 0 and algorithm == "fedprox0":  # no stragglers: FedProx mu=0 is FedAvg
        algorithm = "fedavg"
    return f"fedprox_syn{data}_{algorithm}_s{stragglers}"


def accuracy_curve(name: str) -> np.ndarray:
    rows = read_rows(str(RESULTS / name / "metrics.jsonl"))
    return np.array([r["test_acc"] for r in rows if "test_acc" in r])


def figures(curve: np.ndarray) -> tuple[float, float]:
    """(mean accuracy of the last 20 rounds, mean |change| between rounds 21-200)."""
    return float(curve[-20:].mean()), float(np.abs(np.diff(curve[20:])).mean())


def table() -> str:
    lines = ["| data | stragglers | FedAvg: final / oscillation | FedProx mu=0 | FedProx mu=1 "
             "| FedProx mu=1 ends higher and steadier than FedAvg |", "|---|---|---|---|---|---|"]
    for data, label in DATASETS.items():
        for stragglers in STRAGGLERS:
            cells = {a: figures(accuracy_curve(run_name(data, a, stragglers)))
                     for a in ALGORITHMS}
            (avg, avg_osc), (prox, prox_osc) = cells["fedavg"], cells["fedprox1"]
            holds = "yes" if prox > avg and prox_osc < avg_osc else (
                "higher only" if prox > avg else "steadier only" if prox_osc < avg_osc
                else "no")
            lines.append(f"| {label} | {stragglers}% | "
                         + " | ".join(f"{acc:.1%} / {osc:.3f}" for acc, osc in cells.values())
                         + f" | {holds} |")
    return "\n".join(lines)


def plot(path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(STRAGGLERS), len(DATASETS), figsize=(16, 10), sharex=True,
                             sharey=True)
    for j, (data, label) in enumerate(DATASETS.items()):
        for i, stragglers in enumerate(STRAGGLERS):
            ax = axes[i][j]
            for algorithm, name in ALGORITHMS.items():
                curve = accuracy_curve(run_name(data, algorithm, stragglers))
                ax.plot(np.arange(1, len(curve) + 1), curve, label=name, linewidth=1)
            ax.set_title(f"{label}, {stragglers}% stragglers", fontsize=10)
            ax.grid(alpha=0.3)
            if i == len(STRAGGLERS) - 1:
                ax.set_xlabel("round")
            if j == 0:
                ax.set_ylabel("test accuracy")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--plot", help="also draw the curves into this PNG")
    args = cli.parse_args()
    print(table())
    if args.plot:
        plot(args.plot)


if __name__ == "__main__":
    main()
