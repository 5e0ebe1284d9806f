"""Plain helpers shared by test modules (fixtures live in the conftest files)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def edited_copy(raw: Mapping[str, Any], path: str, value: Any = None, delete: bool = False) -> dict[str, Any]:
    """A deep copy of ``raw`` with the nested key ``a/b/c`` set to ``value`` (or deleted)."""
    out = copy.deepcopy(dict(raw))
    node = out
    parts = path.split("/")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if delete:
        node.pop(parts[-1])
    else:
        node[parts[-1]] = value
    return out
