"""Resolve a stage's config: built-in defaults < recipe YAML < `-o key=value` overrides < explicit flags.

Each stage declares one dataclass; its field names are the YAML keys, the `-o` keys and (with `_`
turned into `-`) the CLI flags, so one setting has one name everywhere. Help text lives in
`field(metadata={"help": ...})`, as in TRL's config classes.

Written by hand because none of our libraries does this: `HfArgumentParser` reads YAML *or* argv,
not a layered merge with typed errors that suggest close keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from .errors import ConfigError

C = TypeVar("C")

RESOLVED_CONFIG_NAME = "config.yaml"


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def config_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key(cls, key: str, where: str) -> ConfigError:
    valid = sorted(config_fields(cls))
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key {key!r} in {where}; {hint}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        return f"a list of {_type_name(inner)}"
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; convert where lossless (int -> float, str of a list)."""
    origin = get_origin(tp)
    bad = ConfigError(f"{key} = {value!r} is not valid; expected {_type_name(tp)}")
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise bad
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(key, value, a)
            except ConfigError:
                continue
        raise bad
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        if isinstance(value, str):  # `-o benchmarks=aime2024,math500` or a single item
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [coerce(key, v, inner) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-6` as a string: accept the float meant
            try:
                return float(value)
            except ValueError:
                pass
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    return value


def load_recipe(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe {str(p)!r} does not exist; give a path to a YAML file (see recipes/)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {str(p)!r} is not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(p)!r} must be a mapping of key: value, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, YAML-parsed value): `-o lr=1e-6 -o use_peft=true -o stages=[...]`."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value; write e.g. -o temperature=0.6")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def resolve(cls: type[C], *, recipe: str | Path | None = None, overrides: list[str] | None = None,
            flags: dict[str, Any] | None = None) -> C:
    """Build `cls` from the four layers; every key is checked, every value type-checked."""
    fields = config_fields(cls)
    hints = field_types(cls)
    values: dict[str, Any] = {}
    layers: list[tuple[str, dict[str, Any]]] = []
    if recipe is not None:
        layers.append((f"recipe {str(recipe)!r}", load_recipe(recipe)))
    if overrides:
        layers.append(("-o overrides", dict(parse_override(o) for o in overrides)))
    if flags:
        layers.append(("flags", {k: v for k, v in flags.items() if v is not None}))
    for where, layer in layers:
        for key, value in layer.items():
            if key not in fields or not fields[key].init:
                raise _unknown_key(cls, key, where)
            values[key] = coerce(key, value, hints[key])
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}


def write_resolved(config: Any, folder: str | Path, name: str = RESOLVED_CONFIG_NAME) -> Path:
    """Write the fully resolved config beside a stage's outputs, so the run can be repeated exactly:
    `still <stage> --recipe <folder>/config.yaml`. Secrets are never fields (only env-var names are)."""
    p = Path(folder) / name
    p.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)
    p.write_text(f"# resolved config ({type(config).__name__}); rerun with --recipe {p}\n{body}",
                 encoding="utf-8")
    return p


def refuse_changed_settings(config: Any, resolved: str | Path, output: str | Path, keys: tuple[str, ...],
                            holds: str, fix: str) -> None:
    """Before appending to `output`, compare the config it was written with (`resolved`, a file from
    write_resolved) with this run's: a key in `keys` (settings that change what a row is) that differs
    would mix rows of two runs, so it is refused: "<holds> with k = old, this run has new; <fix>"."""
    resolved, output = Path(resolved), Path(output)
    if not resolved.exists() or not output.exists():
        return
    old = yaml.safe_load(resolved.read_text()) or {}
    for k in keys:
        if k in old and old[k] != getattr(config, k):
            raise ConfigError(f"{holds} with {k} = {old[k]!r}, this run has {getattr(config, k)!r}; {fix}")


def require(cond: bool, message: str) -> None:
    """`__post_init__` helper: raise a ConfigError naming the rule, the value and the fix."""
    if not cond:
        raise ConfigError(message)
