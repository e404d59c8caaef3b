"""Experiment files: a TOML file holds any flag of a command; flags on the command line win.

    # experiment.toml: keys are the command's flags (dashes or underscores), optionally
    # grouped in tables, which are only for the reader
    [data]
    clients = 100
    partitioner = "iid"
    [federation]
    rounds = 57
    server-lr = 1e-4
    [experiment]   # optional: what the run is for, read by experiments/run.py, not a flag
    description = "the reference recipe"
    target = 0.84

`fedstream run --config experiment.toml --rounds 10` trains 10 rounds. Every run writes the
resolved flags as `config.toml` beside its metrics, so `--config that/config.toml` repeats it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

NOT_CONFIGURABLE = {"help", "config", "log_level"}
EXPERIMENT_TABLE = "experiment"  # describes the run (description, target, command): no flags


class ConfigError(ValueError):
    """An experiment file that cannot be used; the message names the key and what is allowed."""


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Configurable options by their flag's name in underscores (`--data-seed`: data_seed)."""
    return {a.option_strings[-1].lstrip("-").replace("-", "_"): a for a in parser._actions
            if a.option_strings and a.dest not in NOT_CONFIGURABLE}


def _flatten(table: dict, path: str, out: dict) -> dict:
    for key, value in table.items():
        where = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            _flatten(value, where, out)
        elif key.replace("-", "_") in out:
            raise ConfigError(f"key {where!r} is given twice")
        else:
            out[key.replace("-", "_")] = (where, value)
    return out


def config_argv(path: str, parser: argparse.ArgumentParser, command: str) -> list[str]:
    """The flags an experiment file stands for, checked against `parser`'s options."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
    options = _options(parser)
    experiment = table.pop(EXPERIMENT_TABLE, {})
    if not isinstance(experiment, dict):
        raise ConfigError(f"{path}: {EXPERIMENT_TABLE!r} must be a table describing the run")
    argv = []
    for dest, (where, value) in _flatten(table, "", {}).items():
        action = options.get(dest)
        if action is None:
            known = ", ".join(sorted(d.replace("_", "-") for d in options))
            raise ConfigError(f"{path}: unknown key {where!r} for `fedstream {command}`; "
                              f"known keys: {known}")
        flag = action.option_strings[-1]
        if action.nargs == 0:  # a switch such as --dropout
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: {where!r} must be true or false, not {value!r}")
            argv += [flag] if value else []
            continue
        if isinstance(value, (dict, list)) or isinstance(value, bool):
            raise ConfigError(f"{path}: {where!r} must be a single "
                              f"{getattr(action.type, '__name__', 'string')}, not {value!r}")
        if action.type is not None:
            try:
                action.type(str(value))
            except (TypeError, ValueError):
                raise ConfigError(f"{path}: {where!r} must be of type {action.type.__name__}, "
                                  f"not {value!r}") from None
        if action.choices is not None and value not in action.choices:
            raise ConfigError(f"{path}: {where!r} = {value!r} is not allowed; choose one of "
                              f"{', '.join(map(str, action.choices))}")
        argv += [flag, str(value)]
    return argv


def write_resolved(path: Path, args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The command's resolved flags as TOML, ready for `--config`."""
    lines = []
    for name, action in sorted(_options(parser).items()):
        value = getattr(args, action.dest, None)
        if value is None or getattr(action, "secret", False):  # secrets: by flag or environment
            continue
        key = name.replace("_", "-")
        text = ("true" if value else "false") if isinstance(value, bool) else (
            repr(value) if isinstance(value, (int, float)) else json.dumps(str(value)))
        lines.append(f"{key} = {text}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
