"""Strict loading of typed dataclass configs from YAML with dotted ``key=value`` overrides.

A field whose type is a dataclass may be given in YAML as a mapping or as a string: the
string is a path to another YAML file that fills that dataclass (resolved against the
including file's folder, then the working directory, then the repository root).
"""
from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the key."""


def check(cond: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``cond``: the one validation primitive of the config dataclasses."""
    if not cond:
        raise ValueError(message)


def resolve_path(path: str | Path, base_dir: Path | None = None) -> Path:
    """Find ``path`` as given, then under ``base_dir``, the working directory and the repo root."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    for root in (base_dir, Path.cwd(), REPO_ROOT):
        if root is not None and (root / path).exists():
            return (root / path).resolve()
    return path


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with path.open() as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: {_yaml_problem(err)}; fix the YAML there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """``line L, column C: problem`` of a PyYAML error, in one line."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}YAML error: {problem}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. optim.lr=2e-4)")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: the value of override {text!r} is not valid YAML ({_yaml_problem(err)}); "
                          "quote it or fix its brackets") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a nested mapping (in place) and return it."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {} if child is None or isinstance(child, dict) else {"__include__": child}
                node[key] = child
            node = child
        node[keys[-1]] = value
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str, base_dir: Path | None) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists/tuples/dataclasses."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, base_dir)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if len(errors) == 1 else
                          f"{key}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, (str, Path)):
            path = resolve_path(value, base_dir)
            return from_dict(tp, read_yaml(path), prefix=key, base_dir=path.parent)
        if isinstance(value, dict):
            if "__include__" in value:
                path = resolve_path(value.pop("__include__"), base_dir)
                merged = read_yaml(path)
                _deep_update(merged, value)
                return from_dict(tp, merged, prefix=key, base_dir=path.parent)
            return from_dict(tp, value, prefix=key, base_dir=base_dir)
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{key}: expected a mapping or a YAML path for {tp.__name__}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
            return tuple(_coerce(a, v, f"{key}[{i}]", base_dir) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]", base_dir) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)  # YAML reads "5e-5" (no dot) as a string
                except ValueError:
                    pass
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _deep_update(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and "__include__" not in v:
            _deep_update(base[k], v)
        else:
            base[k] = v


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "", base_dir: Path | None = None) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ``ConfigError``."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    dotted = (prefix + ".") if prefix else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {dotted}{unknown[0]} (valid keys under "
                          f"{prefix or 'the top level'}: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, dotted + name, base_dir)
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing config key {dotted}{missing[0]}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        if prefix and str(e).startswith(f"{prefix}."):  # the message names its dotted key already
            raise ConfigError(str(e)) from e
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from e


def drop_unknown(cls: type, data: dict[str, Any], prefix: str = "") -> tuple[dict[str, Any], list[str]]:
    """``data`` without the keys dataclass ``cls`` (and its nested dataclasses) does not know; returns
    the pruned copy and the dotted keys dropped (for configs written by another vosr version)."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    out, dropped = {}, []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            dropped.append(dotted)
        elif dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            out[key], sub = drop_unknown(hints[key], value, dotted + ".")
            dropped += sub
        else:
            out[key] = value
    return out, dropped


def to_dict(obj: Any) -> Any:
    """A plain (YAML/JSON-safe) nested dict of a dataclass config."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) plus dotted overrides."""
    base_dir = None
    data: dict[str, Any] = {}
    if path is not None:
        path = resolve_path(path)
        data = read_yaml(path)
        base_dir = path.parent
    overrides = list(overrides or [])
    apply_overrides(data, overrides)
    try:
        return from_dict(cls, data, base_dir=base_dir)
    except ConfigError as err:
        culprit = _override_of(str(err), overrides)
        if culprit is None:
            raise
        raise ConfigError(f"{err}; fix the override {culprit!r}") from None


def _override_of(message: str, overrides: list[str]) -> str | None:
    """The override whose key the error ``message`` names, if one does (the last one wins, as in loading)."""
    for text in reversed(overrides):
        key = text.split("=", 1)[0].strip().lstrip("-")
        if key and (message.startswith(f"{key}:") or f" {key}" in message or message.startswith(key)):
            return text
    return None


def save_yaml(obj: Any, path: str | Path) -> None:
    """Write a dataclass config (resolved) as YAML."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w") as f:
        yaml.safe_dump(to_dict(obj), f, sort_keys=False)



