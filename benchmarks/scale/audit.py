"""The apiserver's audit log (JSON lines): requests of one user in a time window, by kind.

The benchmark's audit policy logs the operator's user alone, at Metadata level, at the stages
RequestReceived (one event per request, watches included) and ResponseComplete (its code).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from datetime import datetime


def parse_time(stamp: str) -> float:
    """RFC 3339 with microseconds ("2026-12-07T00:30:00.123456Z") as a Unix time."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def request_kind(event: dict) -> str:
    """ "verb resource[/subresource]", e.g. "get pods/log", "watch trainingjobs"."""
    ref = event.get("objectRef") or {}
    resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return f"{event.get('verb', '?')} {resource or event.get('requestURI', '?')}"


def events(lines: Iterable[str], user: str, stage: str) -> Iterable[dict]:
    for line in lines:
        line = line.strip()
        if not line:
            continue
        event = json.loads(line)
        if event.get("stage") == stage and (event.get("user") or {}).get("username") == user:
            yield event


def requests_in_window(lines: Iterable[str], user: str, start: float, end: float) -> Counter[str]:
    """Requests `user` sent in [start, end) (Unix times), counted by `request_kind`."""
    counts: Counter[str] = Counter()
    for event in events(lines, user, "RequestReceived"):
        if start <= parse_time(event["requestReceivedTimestamp"]) < end:
            counts[request_kind(event)] += 1
    return counts


def response_codes_in_window(lines: Iterable[str], user: str, start: float, end: float) -> Counter[str]:
    """Responses to `user`'s requests received in [start, end), by "kind code"."""
    counts: Counter[str] = Counter()
    for event in events(lines, user, "ResponseComplete"):
        if start <= parse_time(event["requestReceivedTimestamp"]) < end:
            code = (event.get("responseStatus") or {}).get("code", "?")
            counts[f"{request_kind(event)} {code}"] += 1
    return counts
