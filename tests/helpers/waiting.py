"""Waiting and running commands in the e2e tests: AssertionError with what was seen, never a skip."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any


def wait_for(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    interval: float = 1.0,
    diag: Callable[[], str] | None = None,
) -> Any:
    """Call `check` until it returns something truthy; AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - transient API errors: retry until the deadline
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            extra = f"\n{diag()}" if diag else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{extra}")
        time.sleep(interval)


def run(cmd: list[str], timeout: float, what: str) -> str:
    """Run a command; AssertionError with its output when it fails or hangs."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{what}: `{' '.join(cmd)}` did not finish in {timeout:.0f}s: {exc}") from None
    if proc.returncode != 0:
        raise AssertionError(
            f"{what}: `{' '.join(cmd)}` exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc.stdout


def duration_seconds(timeout: str) -> float:
    total, number = 0.0, ""
    for ch in timeout:
        if ch.isdigit() or ch == ".":
            number += ch
        else:
            total += float(number or 0) * {"h": 3600, "m": 60, "s": 1}.get(ch, 1)
            number = ""
    return total + float(number or 0)
