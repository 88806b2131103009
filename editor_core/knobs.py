"""Config fields that carry their meaning and bounds, written once.

A field made with ``knob`` keeps its description and its bounds (``ge``, ``gt``, ``le``,
``lt``) in its metadata; ``check_bounds`` enforces them. The service's settings (pydantic
reads the same metadata keys from a dataclass field), the command line's options and the
generated docs all read them from there (``RefineConfig``).
"""

from __future__ import annotations

import operator
from dataclasses import field, fields
from types import MappingProxyType
from typing import Any

BOUNDS = MappingProxyType({"ge": operator.ge, "gt": operator.gt, "le": operator.le,
                           "lt": operator.lt})


def knob(default: Any, description: str, **bounds: float) -> Any:
    """A dataclass field with its meaning and bounds in its metadata."""
    unknown = set(bounds) - set(BOUNDS)
    if unknown:
        raise TypeError(f"unknown bounds {sorted(unknown)}; use {sorted(BOUNDS)}")
    return field(default=default, metadata={"description": description, **bounds})


def check_bounds(config: Any) -> None:
    """Raise ValueError when a field of a dataclass made with ``knob`` is out of bounds."""
    for f in fields(config):
        value = getattr(config, f.name)
        for name, holds in BOUNDS.items():
            if name in f.metadata and not holds(value, f.metadata[name]):
                raise ValueError(f"{f.name} must be {name} {f.metadata[name]}, got {value!r}")
