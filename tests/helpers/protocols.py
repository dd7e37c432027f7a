"""Checking that a class implements a typing.Protocol: every member, with the same parameters."""

from __future__ import annotations

import inspect
from typing import Any


def _parameters(function: Any) -> list[tuple[str, bool]]:
    """(name, has a default) of each parameter, without `self`."""
    params = list(inspect.signature(function).parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    return [(p.name, p.default is not inspect.Parameter.empty) for p in params]


def protocol_members(protocol: type) -> list[str]:
    """The methods a Protocol declares, its bases' included."""
    names = set()
    for base in protocol.__mro__:
        if base is protocol or getattr(base, "_is_protocol", False):
            names |= {n for n, v in vars(base).items() if callable(v) and not n.startswith("_")}
    return sorted(names)


def assert_implements(cls: type, protocol: type) -> None:
    """`cls` has every method of `protocol`, with the same parameter names and defaults."""
    members = protocol_members(protocol)
    assert members, f"{protocol.__name__} declares no methods"
    for name in members:
        assert hasattr(cls, name), f"{cls.__name__} lacks {protocol.__name__}.{name}"
        want = _parameters(getattr(protocol, name))
        have = _parameters(getattr(cls, name))
        assert have == want, f"{cls.__name__}.{name}{have} differs from {protocol.__name__}.{name}{want}"
