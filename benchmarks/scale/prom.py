"""Prometheus text exposition: the samples of a metric, summed over the labels that matter."""

from __future__ import annotations

import re
from collections.abc import Mapping

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_samples(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of `metric` (exact name) in the exposition `text`."""
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None or m.group("name") != metric:
            continue
        labels = {k: v.encode().decode("unicode_escape") for k, v in _LABEL.findall(m.group("labels") or "")}
        found.append((labels, float(m.group("value"))))
    return found


def total(text: str, metric: str, where: Mapping[str, str] | None = None,
          exclude: Mapping[str, str] | None = None) -> float:  # fmt: skip
    """Sum of `metric`'s samples whose labels match all of `where` and none of `exclude`."""
    where, exclude = where or {}, exclude or {}
    return sum(
        value
        for labels, value in parse_samples(text, metric)
        if all(labels.get(k) == v for k, v in where.items())
        and not any(labels.get(k) == v for k, v in exclude.items())
    )
