"""Configuration declared once. A dataclass field made with `option` carries its default,
help, choices (an Enum type, or a tuple) and flag; `add_options` derives the command-line
flags from it, `from_args` builds the dataclass back from parsed flags, `to_argv` gives the
flags that reproduce a configuration (a launcher starting a service). The TOML keys of
experiment files are those flags (`fedstream.cli.config_file` reads them off the parser),
and the resolved configuration is logged at start (`fedstream.common.logs.log_config`).

Nested dataclasses made with `section` contribute their flags flat, so one command's flags
are the union of the sections it is built from; a flag name means one thing everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import types
import typing
from typing import Any, Iterable

_SECTION = "section"


def option(default: Any = None, help: str = "", *, flag: str | None = None,
           env: str | None = None, choices: Iterable[str] | None = None,
           secret: bool = False) -> Any:
    """A configurable field. `env` names an environment variable that overrides the default
    on the command line; `secret` values are never logged or written out."""
    return dataclasses.field(default=default, metadata={
        "help": help, "flag": flag, "env": env, "secret": secret,
        "choices": None if choices is None else tuple(choices)})


def section(cls: type, title: str | None = None) -> Any:
    """A nested configuration whose flags are added flat (under `title` in --help)."""
    return dataclasses.field(default_factory=cls, metadata={_SECTION: True, "title": title})


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _dest(f: dataclasses.Field) -> str:
    return flag_of(f).lstrip("-").replace("-", "_")


def _base_type(hint) -> type:
    """int for `int | None`; the type itself otherwise."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _fields(cls: type):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f, _base_type(hints[f.name])


def _selected(cls: type, name: str, only: Iterable[str] | None, exclude: Iterable[str]) -> bool:
    """A field is named in `only` and `exclude` by its name, or as `Class.field` where two
    sections have a field of the same name."""
    excluded = name in exclude or f"{cls.__name__}.{name}" in exclude
    return not excluded and (only is None or name in only)


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                only: Iterable[str] | None = None, exclude: Iterable[str] = (),
                defaults: dict[str, Any] | None = None) -> None:
    """Add the flags of `cls` (and of its sections) to `parser`. `defaults` replaces a
    field's default for this command only."""
    defaults = defaults or {}
    for f, kind in _fields(cls):
        if f.metadata.get(_SECTION):
            title = f.metadata.get("title")
            target = parser.add_argument_group(title) if title and hasattr(
                parser, "add_argument_group") else parser
            add_options(target, kind, only=only, exclude=exclude, defaults=defaults)
            continue
        if not _selected(cls, f.name, only, exclude):
            continue
        default = defaults.get(f.name, f.default)
        if f.metadata.get("env"):
            default = os.environ.get(f.metadata["env"], default)
        help_text = f.metadata.get("help", "")
        if f.metadata.get("env"):
            help_text += f" (environment: ${f.metadata['env']})"
        if kind is bool:
            parser.add_argument(flag_of(f), dest=_dest(f), action="store_true",
                                default=default, help=help_text)
            continue
        choices = f.metadata.get("choices")
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            choices = choices or [e.value for e in kind]
            default = default.value if isinstance(default, enum.Enum) else default
            kind = str
        secret = bool(f.metadata.get("secret"))  # never shown or written out (config_file)
        action = parser.add_argument(flag_of(f), dest=_dest(f), type=kind, default=default,
                                     choices=choices,
                                     help=help_text + ("" if secret else _default_note(default)))
        action.secret = secret


def _default_note(default) -> str:
    return "" if default in (None, "") else f" (default: {default})"


def from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    """The dataclass the parsed flags stand for. Fields without a flag in `args` keep their
    defaults; `overrides` set fields (a dict for a section sets fields inside it; a field
    of a section may also be named directly)."""
    values = {}
    for f, kind in _fields(cls):
        if f.metadata.get(_SECTION):
            inner = overrides.pop(f.name, {})
            inner.update({k: overrides.pop(k) for k in _leaf_names(kind) if k in overrides})
            values[f.name] = from_args(kind, args, **inner)
        elif f.name in overrides:
            values[f.name] = overrides.pop(f.name)
        elif hasattr(args, _dest(f)):
            value = getattr(args, _dest(f))
            is_enum = isinstance(kind, type) and issubclass(kind, enum.Enum)
            values[f.name] = kind(value) if is_enum and value is not None else value
    if overrides:
        raise TypeError(f"{cls.__name__} has no fields {sorted(overrides)}")
    return cls(**values)


def _leaf_names(cls: type) -> set[str]:
    """The option names of `cls` and of its sections."""
    names = set()
    for f, kind in _fields(cls):
        names |= _leaf_names(kind) if f.metadata.get(_SECTION) else {f.name}
    return names


def to_argv(config, *, exclude: Iterable[str] = ()) -> list[str]:
    """The flags that give `config` when parsed by a command built from its class."""
    argv = []
    for f, kind in _fields(type(config)):
        value = getattr(config, f.name)
        if f.metadata.get(_SECTION):
            argv += to_argv(value, exclude=exclude)
        elif f.name in exclude or value is None:
            continue
        elif kind is bool:
            argv += [flag_of(f)] if value else []
        else:
            argv += [flag_of(f), str(value.value if isinstance(value, enum.Enum) else value)]
    return argv


def coerce_choices(config) -> list[str]:
    """For a frozen dataclass's __post_init__: turn strings given for Enum-typed fields into
    their members, in place. Returns a problem for each value that is not a choice (of the
    field's declared choices, where it narrows the Enum)."""
    problems = []
    for f, kind in _fields(type(config)):
        if not (isinstance(kind, type) and issubclass(kind, enum.Enum)):
            continue
        value = getattr(config, f.name)
        allowed = f.metadata.get("choices") or tuple(str(k.value) for k in kind)
        try:
            member = kind(value)
        except ValueError:
            member = None
        if member is None or str(member.value) not in allowed:
            problems.append(f"{f.name}={value!r}: choose one of {', '.join(allowed)}")
        else:
            object.__setattr__(config, f.name, member)
    return problems


def secret_names(cls: type) -> set[str]:
    """The names of `cls`'s secret fields, its sections' included."""
    names = set()
    for f, kind in _fields(cls):
        if f.metadata.get(_SECTION):
            names |= secret_names(kind)
        elif f.metadata.get("secret"):
            names.add(f.name)
    return names
