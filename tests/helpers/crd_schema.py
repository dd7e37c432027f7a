"""Tools for testing CRD schemas the way the apiserver reads them: walking, structural
fitting, defaulting, and JSON → CEL values."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


# --------------------------------------------------------------------------- shape


_SCALARS = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def _assert_string_fits(value: Any, node: dict[str, Any], path: str) -> None:
    assert isinstance(value, str), path
    if "enum" in node:
        assert value in node["enum"], path
    if node.get("format") == "date-time":
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", value), path


def assert_fits(value: Any, node: dict[str, Any], path: str) -> None:
    """`value` is what the schema `node` keeps: nothing would be pruned, every type matches."""
    kind = node.get("type")
    if kind == "object":
        assert isinstance(value, dict), path
        props = node.get("properties")
        extra = node.get("additionalProperties")
        for key, sub in value.items():
            if props is not None:
                assert key in props, f"{path}.{key} would be pruned"
                assert_fits(sub, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                assert_fits(sub, extra, f"{path}.{key}")
    elif kind == "array":
        assert isinstance(value, list), path
        for i, item in enumerate(value):
            assert_fits(item, node["items"], f"{path}[{i}]")
    elif kind == "string":
        _assert_string_fits(value, node, path)
    elif kind in _SCALARS:
        assert _SCALARS[kind](value), path


def apply_defaults(value: Any, node: dict[str, Any]) -> Any:
    """Structural defaulting as the apiserver does it: missing fields get their default, then
    defaulting recurses into every present object (the defaults included)."""
    value = copy.deepcopy(value)
    if node.get("type") == "object" and isinstance(value, dict):
        for name, sub in (node.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(value[name], sub)
    elif node.get("type") == "array" and isinstance(value, list):
        value = [apply_defaults(v, node["items"]) for v in value]
    return value
