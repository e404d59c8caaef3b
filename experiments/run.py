"""Run experiment files and collect their results: `python experiments/run.py NAME...`;
`python experiments/run.py --table` prints the summary as experiments/README.md's Markdown table.

Each `experiments/configs/NAME.toml` is an experiment file for `fedstream simulate` (or for
`fedstream run` when its [experiment] table sets `command = "run"`), given to it as it is:
`fedstream simulate --config experiments/configs/NAME.toml` repeats a run by hand. Metrics go
to experiments/results/NAME/, and
experiments/results/summary.json records for each run the rounds and wall time it took to
reach its `target` accuracy (or that it did not within its rounds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import tomllib

from fedstream.cli.plot import read_rows

HERE = Path(__file__).resolve().parent


def path_of(name: str) -> Path:
    return HERE / "configs" / f"{name}.toml"


def experiment_of(name: str) -> dict:
    """An experiment file's [experiment] table: description, target, command."""
    return tomllib.loads(path_of(name).read_text()).get("experiment", {})


def summarize(name: str, experiment: dict, rows: list[dict]) -> dict:
    """What summary.json records of one run, from its per-round metrics."""
    target = experiment.get("target", 1.0)
    reached = next((r for r in rows if r.get("test_acc", 0) >= target), None)
    evaluated = [r for r in rows if "test_acc" in r]
    return {"name": name, "description": experiment.get("description", ""), "target": target,
            "rounds_to_target": reached and reached["round"],
            "seconds_to_target": reached and reached["elapsed_s"],
            "rounds_run": rows[-1]["round"], "final_test_acc": evaluated[-1]["test_acc"],
            "best_test_acc": max(r["test_acc"] for r in evaluated),
            "wall_s": rows[-1]["elapsed_s"]}


def run(name: str) -> dict:
    experiment = experiment_of(name)
    command = experiment.get("command", "simulate")
    out = HERE / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "fedstream.cli", "--log-level", "WARNING", command,
            "--config", str(path_of(name))]
    argv += ["--out", str(out), "--quiet"] if command == "run" else ["--metrics", str(metrics)]
    subprocess.run(argv, check=True)
    return summarize(name, experiment, read_rows(str(metrics)))


def _order(name: str) -> tuple:
    """2NN before CNN, IID before shards, FedSGD first; the straggler pair last."""
    algorithm, model, partition = (name.split("_") + ["", ""])[:3]
    return ("straggler" in name, model, partition, algorithm != "fedsgd", name)


def table(summary: dict) -> str:
    lines = ["| experiment | target | rounds to target | seconds to target | rounds run "
             "| best test accuracy |", "|---|---|---|---|---|---|"]
    for name in sorted(summary, key=_order):
        r = summary[name]
        rounds = "not reached" if r["rounds_to_target"] is None else r["rounds_to_target"]
        seconds = "-" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}"
        lines.append(f"| `{name}`: {r['description']} | {r['target']:.0%} | {rounds} "
                     f"| {seconds} | {r['rounds_run']} | {r['best_test_acc']:.2%} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("names", nargs="*")
    p.add_argument("--table", action="store_true", help="print the summary as Markdown")
    args = p.parse_args()
    summary_path = HERE / "results" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name in args.names:
        summary[name] = run(name)
        print(json.dumps(summary[name]))
        summary_path.write_text(json.dumps(summary, indent=1, sort_keys=True))
    if args.table:
        print(table(summary))


if __name__ == "__main__":
    main()
