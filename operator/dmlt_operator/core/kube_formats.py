"""Kubernetes' own formats for values that end up in Pods: the spec models check them.

The CRDs hold the same rules as `pattern`s and CEL (tests/unit/test_crd_schema.py compares the
patterns with these and evaluates the CEL rules), so the operator and the apiserver agree on
what a valid name, label or quantity is. Each checker raises ValueError with the message the
CRD's rule gives.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""Names of Secrets, ConfigMaps, claims and ServiceAccounts (at most 253 characters)."""
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
"""At most 63 characters."""
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
"""A qualified name: an optional DNS-subdomain prefix (at most 253 characters) and '/'."""
ENV_NAME = r"^[ -<>-~]+$"
"""Kubernetes >= 1.34 (RelaxedEnvironmentVariableValidation, GA): printable ASCII but '='."""
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
FIELD_PATH = (
    r"^(metadata\.(name|namespace|uid)|spec\.(nodeName|serviceAccountName)"
    r"|status\.(hostIP|hostIPs|podIP|podIPs)|metadata\.(labels|annotations)\['[^']+'\])$"
)
"""The Pod fields an env var may read (downward API)."""
RESOURCE_FIELD = r"^(limits|requests)\.(cpu|memory|ephemeral-storage|hugepages-[a-zA-Z0-9.]+)$"
QUANTITY = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$"
"""Kubernetes' quantity grammar (apimachinery resource.Quantity)."""
STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")
HUGEPAGES = r"^hugepages-[a-zA-Z0-9.]+$"
MAX_LABEL_KEY = 317

QUANTITY_MESSAGE = "must be a non-negative Kubernetes quantity, e.g. 500m, 2Gi or 1 (not 1GB or 3gi)"
LABEL_KEY_MESSAGE = (
    "must be a label key: an optional DNS-subdomain prefix and '/', then at most 63 letters, "
    "digits, '-', '_' or '.', starting and ending with a letter or digit"
)
RESOURCE_NAME_MESSAGE = (
    "resource names are cpu, memory, ephemeral-storage, hugepages-<size> or a domain-qualified "
    "extended resource such as nvidia.com/gpu"
)


def matches(pattern: str, value: str) -> bool:
    """Whether the whole of `value` matches, as Go's RE2 reads `^...$` (Python's `$` also
    matches before a final newline)."""
    return re.fullmatch(pattern, value) is not None


def quantity(value: Any) -> Decimal:
    """The value of a non-negative quantity (an integer or a string in Kubernetes' grammar)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} {QUANTITY_MESSAGE}")
    if isinstance(value, str) and (len(value) > 64 or not matches(QUANTITY, value)):
        raise ValueError(f"{value!r} {QUANTITY_MESSAGE}")
    parsed = parse_quantity(value)
    if parsed < 0:
        raise ValueError(f"{value!r} {QUANTITY_MESSAGE}")
    return parsed


def check_label_key(key: str) -> str:
    prefix, _, _ = key.rpartition("/")
    if len(key) > MAX_LABEL_KEY or not matches(LABEL_KEY, key) or len(prefix) > 253:
        raise ValueError(f"{key!r} {LABEL_KEY_MESSAGE}")
    return key


def check_pattern(pattern: str, value: str, what: str) -> str:
    if not matches(pattern, value):
        raise ValueError(f"{value!r} is not {what}")
    return value


def is_extended_resource(name: str) -> bool:
    return "/" in name


def is_overcommittable(name: str) -> bool:
    """Extended resources and hugepages cannot be requested beyond (or without) their limit."""
    return not (is_extended_resource(name) or matches(HUGEPAGES, name))


def check_resource_name(name: str) -> str:
    standard = name in STANDARD_RESOURCES or matches(HUGEPAGES, name)
    extended = is_extended_resource(name) and not name.startswith("kubernetes.io/")
    if not (standard or (extended and matches(LABEL_KEY, name))):
        raise ValueError(f"{name!r}: {RESOURCE_NAME_MESSAGE}")
    return name
