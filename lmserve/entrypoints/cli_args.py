"""Command-line flags generated from config dataclasses, so each flag maps 1:1 onto a field."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, skip: set[str] = frozenset()) -> list[str]:
    """Add `--field-name` for each scalar, list or dict field of `cls`; return the field names added."""
    hints = typing.get_type_hints(cls)
    added = []
    for field in dataclasses.fields(cls):
        if not field.init or field.name in skip:
            continue
        kind, element = _base_type(hints[field.name])
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        elif kind in (int, float, str):
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS)
        elif kind is list:
            parser.add_argument(flag, type=element, nargs="*", action="extend", default=argparse.SUPPRESS)
        elif kind is dict:
            parser.add_argument(flag, type=json.loads, default=argparse.SUPPRESS, help="a JSON object")
        else:
            continue
        added.append(field.name)
    return added


def pick(namespace: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The options the user actually gave among `names` (unset flags keep the dataclass defaults)."""
    return {name: getattr(namespace, name) for name in names if hasattr(namespace, name)}


def _base_type(hint: Any) -> tuple[Any, Any]:
    """`int | None` -> (int, None); `list[str]` -> (list, str); `dict[int, float]` -> (dict, None)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    origin = typing.get_origin(hint)
    if origin in (list, dict):
        args = typing.get_args(hint)
        return origin, (args[0] if origin is list and args else None)
    return hint, None
