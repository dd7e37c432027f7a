"""What the typed specs of both resources share: the pydantic base model (camelCase aliases,
unknown fields rejected, frozen), field paths in error messages, and object-name checks."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
"""A DNS-1035 label: what names a Service and prefixes Pod hostnames."""


class SpecError(ValueError):
    """A custom resource's spec is invalid; the message names every offending field."""


class SpecModel(BaseModel):
    """Base of every spec model: the CRD's camelCase names, nothing unknown, immutable."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def refuse_repeated(names: list[str], message: str) -> None:
    """ValueError `<message>: <the names that occur more than once, sorted>` if any do."""
    if dupes := ", ".join(sorted({n for n in names if names.count(n) > 1})):
        raise ValueError(f"{message}: {dupes}")


def field_path(loc: tuple[Any, ...]) -> str:
    """`spec.trainer.hiddenDims[0]` for pydantic's error location of that field."""
    parts: list[str] = ["spec"]
    for item in loc:
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
        elif str(item).startswith("function-"):
            continue
        else:
            parts.append(to_camel(str(item)) if "_" in str(item) else str(item))
    return ".".join(parts)


def check_name(name: str, limit: int, purpose: str, error: type[SpecError] = SpecError) -> None:
    """Raise `error` unless `name` is a DNS-1035 label of at most `limit` characters."""
    if len(name) > limit or not NAME_RE.match(name):
        raise error(
            f"metadata.name {name!r}: must be at most {limit} characters of lower-case "
            f"letters, digits and '-', starting with a letter ({purpose})"
        )
