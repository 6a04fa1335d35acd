"""Configuration files: YAML data validated into typed dataclasses before any work starts.

A config is plain data (``yaml.safe_load``: no tags, no code). :func:`parse` walks a dataclass's
type hints and checks every key: unknown keys, wrong types and out-of-range values each raise a
one-line :class:`LatentdaError` naming the key path (e.g. ``training.learning_rate``). Ints, and
strings that spell a number (YAML 1.1 reads ``1e-3`` as a string), are accepted where floats are
expected; nothing else is coerced.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from numbers import Integral, Real
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from latentda.errors import LatentdaError

__all__ = ["parse", "parse_file", "parse_known", "check_types", "load_config", "require", "to_dict", "config_defaults", "read_text", "read_json", "parse_yaml",
           "MAX_SEED"]

T = TypeVar("T")

# Seeds are integers in [0, 2**32): what numpy, torch and jax all accept, and small enough that the
# per-member seeds derived from them (seed * 1_000_003 + member) stay within torch's 64 bits.
MAX_SEED = 2**32 - 1


def require(condition: bool, key: str, message: str) -> None:
    """Raise a config error for ``key`` unless ``condition``."""
    if not condition:
        raise LatentdaError(f"config: {key}: {message}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _parse_value(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _parse_value(option, value, key)
            except LatentdaError as error:
                errors.append(str(error))
        raise LatentdaError(errors[0] if len(errors) == 1 else f"config: {key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        require(value in args, key, f"expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        require(isinstance(value, dict), key, f"expected a mapping, got {value!r}")
        return parse(tp, value, key)
    if origin in (list, tuple):
        require(isinstance(value, (list, tuple)), key, f"expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            require(len(value) == len(args), key, f"expected {len(args)} items, got {len(value)}")
            return tuple(_parse_value(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        parsed = [_parse_value(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(parsed) if origin is tuple else parsed
    if origin is dict:
        require(isinstance(value, dict), key, f"expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        require(isinstance(value, bool), key, f"expected true or false, got {value!r}")
        return value
    if tp is int:  # a numpy integer too (settings built in Python); never a bool
        require(isinstance(value, Integral) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string; accept what is clearly a number
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, Real) and not isinstance(value, bool)
        require(ok, key, f"expected a number, got {value!r}")
        require(math.isfinite(value), key, f"must be finite, got {value!r}")
        return float(value)
    if tp is str:
        require(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"config type {tp} of {key} is not supported")  # a programming error, not a user error


def parse(cls: type[T], data: dict, prefix: str = "") -> T:
    """Validate ``data`` into dataclass ``cls``; missing keys take the dataclass defaults."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LatentdaError(f"config: {prefix or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise LatentdaError(f"config: unknown key '{where}{unknown[0]}' (allowed: {', '.join(fields)})")
    values = {}
    for name, field in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            values[name] = _parse_value(hints[name], data[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise LatentdaError(f"config: missing required key '{key}'")
    instance = cls(**values)
    check = getattr(instance, "validate", None)
    if check is not None:
        check(prefix)
    return instance


def parse_file(cls: type[T], data: dict, source: str | os.PathLike) -> T:
    """:func:`parse` of the data read from the file ``source``, whose errors name the file."""
    try:
        return parse(cls, data)
    except LatentdaError as error:
        raise LatentdaError(f"{source}: {str(error).removeprefix('config: ')}") from None


def parse_known(cls: type[T], data: dict, source: str | os.PathLike) -> T:
    """Validate the keys of ``data`` that ``cls`` declares (others are ignored: files written by
    other libraries, e.g. a diffusers scheduler config) into ``cls``; errors name ``source``."""
    known = {f.name for f in dataclasses.fields(cls)}
    return parse_file(cls, {k: v for k, v in data.items() if k in known} if isinstance(data, dict) else data, source)


def check_types(instance: Any, skip: tuple[str, ...] = ()) -> None:
    """Check the fields of the dataclass ``instance`` (e.g. settings built from keyword arguments), but those in
    ``skip``, against their type hints by :func:`parse`'s rules: one-line errors naming the field instead of a
    failure deep in the work."""
    hints = typing.get_type_hints(type(instance))
    for field in (f for f in dataclasses.fields(instance) if f.name not in skip):
        value = getattr(instance, field.name)
        parsed = _parse_value(hints[field.name], value, field.name)
        require(not isinstance(value, str) or isinstance(parsed, str), field.name, f"expected a number, got {value!r}")


def read_text(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of a file, or a one-line error saying it is missing or not UTF-8 text."""
    path = Path(path)
    if not path.is_file():
        raise LatentdaError(f"{path}: {what} not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise LatentdaError(f"{path}: not UTF-8 text (byte {error.start} of the file)") from None


def parse_yaml(text: str, source: str) -> Any:
    """YAML text as plain data (``yaml.safe_load``: no tags, no code); a one-line error naming ``source``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:  # includes characters YAML refuses, e.g. undecodable bytes of argv
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise LatentdaError(f"{source}: invalid YAML ({problem}{where})") from None


def read_json(path: str | os.PathLike, what: str) -> dict:
    """A JSON object from a UTF-8 file (metadata saved with a model), with one-line errors naming it."""
    text = read_text(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise LatentdaError(f"{path}: corrupt {what} (invalid JSON: {error})") from None
    if not isinstance(data, dict):
        raise LatentdaError(f"{path}: corrupt {what} (expected a JSON object, got {type(data).__name__})")
    return data


def load_config(cls: type[T], path: str | os.PathLike, overrides: dict | None = None) -> T:
    """Read a YAML file (safely: data only) and validate it into ``cls``."""
    path = Path(path)
    data = parse_yaml(read_text(path, "config file"), str(path)) or {}
    if not isinstance(data, dict):
        raise LatentdaError(f"{path}: the top level must be a mapping of keys to values")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise LatentdaError(f"--set {dotted}: '{part}' is not a section")
        node[last] = value
    return parse(cls, data)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(instance: Any) -> dict:
    """A config dataclass as plain data (tuples become lists), e.g. to save next to a model."""
    return _plain(instance)


def config_defaults(cls: type) -> dict:
    """The defaults of config dataclass ``cls`` as plain data (sections as mappings; required keys
    absent): what a key a config file leaves out means."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return _plain(values)
