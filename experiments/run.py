"""Run experiment files and collect their results: `python experiments/run.py NAME...`.

Each `experiments/configs/NAME.toml` is an experiment file for `fedstream simulate` (or for
`fedstream run` when it sets `command = "run"`). Metrics go to experiments/results/NAME/, and
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

HERE = Path(__file__).resolve().parent


def run(name: str) -> dict:
    config_path = HERE / "configs" / f"{name}.toml"
    spec = tomllib.loads(config_path.read_text())
    experiment = spec.pop("experiment", {})
    command = experiment.get("command", "simulate")
    out = HERE / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    flags = out / "flags.toml"  # the file without its [experiment] table: fedstream's flags only
    flags.write_text("".join(f"{key} = {json.dumps(value)}\n" for table in spec.values()
                             for key, value in table.items()))
    argv = [sys.executable, "-m", "fedstream.cli", "--log-level", "WARNING", command,
            "--config", str(flags)]
    argv += ["--out", str(out), "--quiet"] if command == "run" else ["--metrics", str(metrics)]
    subprocess.run(argv, check=True)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    target = experiment.get("target", 1.0)
    reached = next((r for r in rows if r.get("test_acc", 0) >= target), None)
    evaluated = [r for r in rows if "test_acc" in r]
    return {"name": name, "description": experiment.get("description", ""), "target": target,
            "rounds_to_target": reached and reached["round"],
            "seconds_to_target": reached and reached["elapsed_s"],
            "rounds_run": rows[-1]["round"], "final_test_acc": evaluated[-1]["test_acc"],
            "best_test_acc": max(r["test_acc"] for r in evaluated),
            "wall_s": rows[-1]["elapsed_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("names", nargs="+")
    names = p.parse_args().names
    summary_path = HERE / "results" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name in names:
        summary[name] = run(name)
        print(json.dumps(summary[name]))
        summary_path.write_text(json.dumps(summary, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
