"""The committed experiments: every file is a valid run of its command, and every figure in
summary.json is what its committed metrics say."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from fedstream.cli import local, simulate
from fedstream.cli.main import parse
from fedstream.cli.plot import read_rows

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
_spec = importlib.util.spec_from_file_location("experiments_run", EXPERIMENTS / "run.py")
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)

NAMES = sorted(p.stem for p in (EXPERIMENTS / "configs").glob("*.toml"))
SUMMARY = json.loads((EXPERIMENTS / "results" / "summary.json").read_text())
CONFIG_OF = {"simulate": simulate.config_from_args, "run": local.config_from_args}


def test_there_are_experiments():
    assert len(NAMES) >= 10


@pytest.mark.parametrize("name", NAMES)
def test_experiment_file_is_a_valid_run(name):
    experiment = runner.experiment_of(name)
    assert experiment["description"] and 0 < experiment["target"] <= 1
    command = experiment.get("command", "simulate")
    config = CONFIG_OF[command](parse([command, "--config", str(runner.path_of(name))]))
    assert config.federation.rounds >= 1
    if command == "simulate":  # the same experiment over the network, as it is
        distributed = local.config_from_args(parse(["run", "--config", str(runner.path_of(name))]))
        # equal but for the workers the coordinator awaits: `run` starts 2 by default
        assert dataclasses.replace(distributed.federation, min_workers=1) == config.federation


@pytest.mark.parametrize("name", sorted(SUMMARY))
def test_summary_is_what_the_metrics_say(name):
    experiment = runner.experiment_of(name)
    rows = read_rows(str(EXPERIMENTS / "results" / name / "metrics.jsonl"))
    assert SUMMARY[name] == runner.summarize(name, experiment, rows)


def test_readme_table_is_the_summary():
    readme = (EXPERIMENTS / "README.md").read_text()
    assert runner.table(SUMMARY) in readme


def test_the_fedprox_comparison_shown_is_what_its_runs_say():
    """experiments/fedprox.py's grid, computed from the committed metrics, is the one in
    experiments/README.md, verdicts included."""
    spec = importlib.util.spec_from_file_location("fedprox", EXPERIMENTS / "fedprox.py")
    fedprox = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fedprox)
    assert fedprox.table() in (EXPERIMENTS / "README.md").read_text()


RESOLVED = sorted((p.parent.name, p.name) for p in (EXPERIMENTS / "results").glob("*/*config.toml"))


@pytest.mark.parametrize("name, file", RESOLVED)
def test_resolved_configs_of_committed_runs_repeat_them(name, file):
    """`run` writes config.toml (its own flags) and its coordinator metrics.config.toml;
    `simulate` writes metrics.config.toml. Each must still be a valid --config of its command."""
    command = runner.experiment_of(name).get("command", "simulate")
    if command == "run" and file == "metrics.config.toml":
        command = "coordinator"
    args = parse([command, "--config", str(EXPERIMENTS / "results" / name / file)])
    assert args.rounds == SUMMARY[name]["rounds_run"]


PRIVATE = sorted(name for name in SUMMARY
                 if "dp_epsilon" in read_rows(str(EXPERIMENTS / "results" / name /
                                                  "metrics.jsonl"))[-1])


def test_there_are_private_experiments():
    assert len(PRIVATE) >= 3


@pytest.mark.parametrize("name", PRIVATE)
def test_the_epsilons_of_committed_private_runs_are_dp_accountings(name):
    """Every committed private run's epsilon, round by round, recomputed here from its
    resolved config with dp-accounting directly, and its randomness not seeded."""
    import dp_accounting
    import tomllib
    resolved = tomllib.loads((EXPERIMENTS / "results" / name / "metrics.config.toml").read_text())
    federation = {k: v for section in resolved.values() if isinstance(section, dict)
                  for k, v in section.items()} | resolved
    assert federation["sampling"] == "poisson" and "privacy-research-seed" not in federation
    event = dp_accounting.PoissonSampledDpEvent(
        federation["client-fraction"],
        dp_accounting.GaussianDpEvent(federation["dp-noise-multiplier"]))
    rows = read_rows(str(EXPERIMENTS / "results" / name / "metrics.jsonl"))
    for row in rows[::20] + rows[-1:]:
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(event, row["round"])
        assert row["dp_epsilon"] == pytest.approx(accountant.get_epsilon(federation["dp-delta"]),
                                                  rel=1e-9)
        assert "dp_guarantee" not in row and "train_loss" not in row
