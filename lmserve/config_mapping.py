"""Config files' mappings turned into dataclasses, with errors that name the place in the file."""

from __future__ import annotations

import dataclasses
from typing import Any

from lmserve.errors import ConfigError


def build_dataclass(cls: type, fields: dict[str, Any], where: str) -> Any:
    """`cls(**fields)`, where an unknown or missing field is a ConfigError naming `where` and the known fields."""
    known = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**fields)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from error
