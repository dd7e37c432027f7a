"""A CRD's admission checks evaluated without an apiserver, for the unit tier.

The OpenAPI part (types, patterns, enums, lengths, required fields) is checked with jsonschema,
the CEL rules with cel-python, and `x-kubernetes-list-type: map` keys for duplicates. cel-python
lacks the libraries Kubernetes adds to CEL; `KUBERNETES_CEL` is a fake of the few our CRDs use
(the quantity library's isQuantity/quantity/compareTo/isInteger and the strings library's
split), built on the operator's own quantity parser. The real apiserver runs the same cases in
tests/integration/test_admission.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import celpy
import jsonschema
from celpy import celtypes
from dmlt_operator.core import kube_formats as kf
from kubernetes.utils.quantity import parse_quantity


@dataclass(frozen=True)
class _Quantity:
    value: Decimal


def _is_quantity(text: Any) -> celtypes.BoolType:
    return celtypes.BoolType(isinstance(text, str) and len(text) <= 64 and kf.matches(kf.QUANTITY, text))


def _quantity(text: Any) -> _Quantity:
    if not _is_quantity(text):
        raise ValueError(f"quantity({text!r}): not a quantity")
    return _Quantity(parse_quantity(str(text)))


def _compare(a: _Quantity, b: _Quantity) -> celtypes.IntType:
    return celtypes.IntType((a.value > b.value) - (a.value < b.value))


KUBERNETES_CEL = {
    "isQuantity": _is_quantity,
    "quantity": _quantity,
    "compareTo": _compare,
    "isInteger": lambda q: celtypes.BoolType(q.value == q.value.to_integral_value()),
    "split": lambda s, sep: celtypes.ListType([celtypes.StringType(p) for p in str(s).split(str(sep))]),
}


def to_cel(value: Any, node: dict[str, Any] | None) -> Any:
    """JSON → CEL value the way the apiserver types it (number fields are doubles)."""
    node = node or {}
    if isinstance(value, dict):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        extra = extra if isinstance(extra, dict) else None
        return celtypes.MapType(
            {celtypes.StringType(k): to_cel(v, props.get(k, extra)) for k, v in value.items()}
        )
    if isinstance(value, list):
        return celtypes.ListType([to_cel(v, node.get("items")) for v in value])
    if node.get("type") == "number" and isinstance(value, int | float):
        return celtypes.DoubleType(float(value))
    return celpy.json_to_cel(value)


_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def _evaluate(rule: str, activation: dict[str, Any]) -> bool:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule), functions=KUBERNETES_CEL)
    try:
        result = _PROGRAMS[rule].evaluate(activation)
    except Exception:  # an evaluation error refuses the object, as in the apiserver
        return False
    return not isinstance(result, Exception) and bool(result)


def _broken_rules(node: dict[str, Any], value: Any, old_value: Any, path: str) -> list[str]:
    """`path: message` of the node's own rules that `value` breaks."""
    failed = []
    for r in node.get("x-kubernetes-validations", []):
        transition = "oldSelf" in r["rule"]
        if transition and old_value is None:
            continue  # transition rules only run on updates where the field existed
        activation = {"self": to_cel(value, node)}
        if transition:
            activation["oldSelf"] = to_cel(old_value, node)
        if not _evaluate(r["rule"], activation):
            failed.append(f"{path}{r.get('fieldPath', '')}: {r['message']}")
    return failed


def _children(node: dict[str, Any], value: Any, old_value: Any, path: str):
    """(schema, value, old value, path) of each child of `value` the schema describes."""
    if isinstance(value, dict):
        extra = node.get("additionalProperties")
        for name, sub in value.items():
            child = (node.get("properties") or {}).get(name)
            old = old_value.get(name) if isinstance(old_value, dict) else None
            if child is not None:
                yield child, sub, old, f"{path}.{name}"
            elif isinstance(extra, dict):
                yield extra, sub, old, f"{path}[{name}]"
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            yield node["items"], item, None, f"{path}[{i}]"


def cel_violations(schema: dict[str, Any], obj: Any, old: Any = None, path: str = "") -> list[str]:
    """`path: message` of every CEL rule `obj` breaks (list items and map values included;
    transition rules only where the old object had the field)."""
    failed = _broken_rules(schema, obj, old, path)
    for child in _children(schema, obj, old, path):
        failed += cel_violations(*child)
    return failed


def _openapi(node: Any) -> Any:
    """The schema as plain JSON Schema: Kubernetes' extensions dropped (int-or-string already
    spells its anyOf)."""
    if isinstance(node, dict):
        return {k: _openapi(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if isinstance(node, list):
        return [_openapi(v) for v in node]
    return node


def _json_path(parts: Any) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Any:
    """`pattern` as the apiserver reads it: Go's `$` is the end of the text, never before a final
    newline as Python's."""
    if isinstance(instance, str) and not kf.matches(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} should match {pattern!r}")


_Validator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"pattern": _pattern})


def schema_violations(schema: dict[str, Any], obj: Any) -> list[str]:
    """`path: message` of every OpenAPI check `obj` fails, and of duplicates in list maps and sets."""
    validator = _Validator(_openapi(schema))
    failed = [f"{_json_path(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]

    def visit(node: dict[str, Any], value: Any, path: str) -> None:
        if isinstance(value, list) and node.get("x-kubernetes-list-type") in ("map", "set"):
            keys = node.get("x-kubernetes-list-map-keys", [])
            seen: set[tuple[Any, ...]] = set()
            for i, item in enumerate(value):
                key = tuple(item.get(k) for k in keys) if keys else (type(item), item)
                if key in seen:
                    failed.append(f"{path}[{i}]: Duplicate value: {key}")
                seen.add(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                child = (node.get("properties") or {}).get(name)
                if child is not None:
                    visit(child, sub, f"{path}.{name}")
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            for i, item in enumerate(value):
                visit(node["items"], item, f"{path}[{i}]")

    visit(schema, obj, "")
    return failed


def admission_violations(schema: dict[str, Any], obj: Any, old: Any = None) -> list[str]:
    """Everything the apiserver's validation of a CRD's schema would refuse `obj` for."""
    return schema_violations(schema, obj) + cel_violations(schema, obj, old)


def pattern_of(schema: dict[str, Any], path: str) -> str:
    """The `pattern` at a dotted schema path (`[]` steps into items, `{}` into map values)."""
    node = schema
    for part in re.findall(r"[^.\[\]{}]+|\[\]|\{\}", path):
        if part == "[]":
            node = node["items"]
        elif part == "{}":
            node = node["additionalProperties"]
        else:
            node = node["properties"][part]
    return node["pattern"]
