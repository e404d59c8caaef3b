"""Configuration declared once: flags, experiment-file keys and the argv a launcher passes on
all derive from the dataclasses, and parse back to the same configuration."""

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

from fedstream.cli import local
from fedstream.cli.main import build_parser, parse
from fedstream.common.options import add_options, from_args, to_argv
from fedstream.common.tls import TlsConfig
from fedstream.coordinator.config import (
    CoordinatorConfig,
    FederationConfig,
    Mode,
    Sampling,
    ServerOptimizer,
)
from fedstream.datapool.partition import Partitioner
from fedstream.datapool.server import DataConfig, DataPoolConfig
from fedstream.worker.config import WorkerConfig

SOURCES = Path(__file__).resolve().parents[1]


def test_a_launchers_argv_parses_back_to_the_same_configs():
    federation = FederationConfig(rounds=9, min_workers=3, update="delta", mode="fedbuff",
                                  server_optimizer="yogi", normalize=True, client_lr=0.05)
    tls = TlsConfig(ca="ca.pem", cert="s.pem", key="s.key", mutual=True)
    configs = {
        "coordinator": CoordinatorConfig(listen="127.0.0.1:0", datapool="h:1", tls=tls,
                                         federation=federation),
        "datapool": DataPoolConfig(data=DataConfig(clients=7, partitioner="dirichlet",
                                                   data_seed=3), tls=tls),
        "worker": WorkerConfig(coordinator="c:1", name="w-3", delay_s=0.5, tls=tls),
    }
    parser = build_parser()
    for command, config in configs.items():
        args = parser.parse_args([command, *to_argv(config)])
        assert from_args(type(config), args) == config, command


def test_choices_are_enums_and_strings_are_accepted():
    config = FederationConfig(mode="fedasync", server_optimizer="sgd", update="delta")
    assert config.mode is Mode.FEDASYNC and config.server_optimizer is ServerOptimizer.SGD
    assert DataConfig(partitioner="iid").partitioner is Partitioner.IID
    with pytest.raises(ValueError, match="partitioner='pathological': choose one of reference"):
        DataConfig(partitioner="pathological")
    with pytest.raises(ValueError, match="mode='fedsync': choose one of sync, fedbuff, fedasync"):
        FederationConfig(mode="fedsync")


def test_a_federation_config_is_sections_read_flat_or_by_section():
    """Each part is handed its section; a knob reads the same flat, and a config is built
    from flat values, sections or both."""
    c = FederationConfig(rounds=3, dp_clip=1.0, dp_noise_multiplier=1.0, sampling="poisson",
                         client_fraction=0.1)
    assert c.rounds == c.schedule.rounds == 3 and c.dp_clip == c.privacy.dp_clip == 1.0
    assert c.sampling is Sampling.POISSON is c.client_sampling.sampling  # coerced in place
    assert c.private and c.privacy.private and c.site_names == ()
    again = dataclasses.replace(c, rounds=5)
    assert again.rounds == 5 and again.privacy == c.privacy
    assert FederationConfig(privacy=c.privacy, rounds=4).dp_clip == 1.0
    assert c.flat()["dp_clip"] == 1.0 and "privacy" not in c.flat()
    parser = argparse.ArgumentParser()
    add_options(parser, FederationConfig)
    assert set(c.flat()) == {a.dest for a in parser._actions if a.dest != "help"}
    with pytest.raises(TypeError, match="no option dp_clipp"):
        FederationConfig(dp_clipp=1.0)
    with pytest.raises(AttributeError, match="no option 'dp_clipp'"):
        _ = c.dp_clipp
    with pytest.raises(ValueError, match="DP noise needs --dp-clip"):  # rules across sections
        FederationConfig(dp_noise_multiplier=1.0)


def test_units_default_to_one_per_awaited_worker():
    assert FederationConfig(min_workers=3).units == 3
    assert FederationConfig(min_workers=3, units=5).units == 5


def test_one_meaning_per_flag_name():
    """`--workers` is worker processes (`run` only); `simulate` and `coordinator` say what they
    mean: work units, workers awaited."""
    run = local.config_from_args(parse(["run", "--workers", "3"]))
    assert (run.workers, run.federation.min_workers, run.federation.units) == (3, 3, 3)
    simulate = parse(["simulate", "--units", "4"])
    assert simulate.units == 4 and not hasattr(simulate, "workers")
    assert parse(["simulate"]).units == 2  # like `run`'s two workers: the same model
    coordinator = parse(["coordinator", "--min-workers", "2"])
    assert coordinator.min_workers == 2 and not hasattr(coordinator, "workers")
    with pytest.raises(SystemExit):
        parse(["simulate", "--workers", "2"])


def test_secrets_are_never_written_or_logged(tmp_path, caplog):
    from fedstream.cli.config_file import write_resolved
    from fedstream.common.logs import log_config
    args = parse(["worker", "--auth-token", "s3cret-token-0123456789"])
    write_resolved(tmp_path / "c.toml", args, args.parser)
    assert "s3cret" not in (tmp_path / "c.toml").read_text()
    import logging
    with caplog.at_level(logging.INFO):
        log_config(logging.getLogger("t"), "worker", from_args(WorkerConfig, args))
    assert "s3cret" not in caplog.text and '"auth_token": "***"' in caplog.text


def test_a_token_from_the_environment_is_not_shown_by_help(monkeypatch, capsys):
    """Adversary: someone who sees a terminal (a screen share, a pasted log) where an
    operator ran `fedstream worker --help` with FEDSTREAM_TOKEN set: the token becomes the
    flag's default, and defaults are printed in the help."""
    monkeypatch.setenv("FEDSTREAM_TOKEN", "s3cret-token-0123456789")
    with pytest.raises(SystemExit):
        parse(["worker", "--help"])
    shown = capsys.readouterr().out
    assert "--auth-token" in shown and "s3cret" not in shown


def _imports(path: Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith(package)}


def test_no_import_cycles_between_modules():
    modules = {}
    for role in ("common", "coordinator", "datapool", "worker", "cli"):
        for path in (SOURCES / role / "fedstream" / role).glob("*.py"):
            modules[f"fedstream.{role}.{path.stem}"] = path
    graph = {name: _imports(path, "fedstream.") & set(modules) for name, path in modules.items()}
    done, stack = set(), []

    def visit(name):
        if name in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(name):] + [name]))
        if name in done:
            return
        stack.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        stack.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert len(graph) > 40


def test_choices_offered_are_choices_accepted(capsys):
    """`--weights-encoding` offers what weights can travel as, and nothing else: the help
    lists raw, float16 and bfloat16, and int8 is refused at parsing, not at startup."""
    with pytest.raises(SystemExit):
        parse(["coordinator", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    offered = help_text.split("--weights-encoding {")[1].split("}")[0]
    assert offered.split(",") == ["raw", "float16", "bfloat16"]
    with pytest.raises(SystemExit):
        parse(["coordinator", "--weights-encoding", "int8"])
    with pytest.raises(ValueError, match="weights_encoding='topk': choose one of raw, "
                                         "float16, bfloat16"):
        FederationConfig(weights_encoding="topk")
    assert parse(["simulate", "--update-encoding", "topk"]).update_encoding == "topk"
