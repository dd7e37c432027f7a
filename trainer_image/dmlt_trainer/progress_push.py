"""Rank 0 pushes each epoch event to the operator's progress receiver (docs/operator.md, "Progress").

Standard library only (urllib + ssl). A background thread sends the latest report; a report that
arrives while one is in flight replaces any that waits, so a slow or absent receiver costs
training nothing: `submit` never blocks, and a failed push is dropped (the next epoch repairs
it). The token file is read again for every push, because the kubelet rotates it.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from dmlt_contract import ATTEMPT_ENV, PROGRESS_CA_ENV, PROGRESS_TOKEN_FILE_ENV, PROGRESS_URL_ENV

log = logging.getLogger(__name__)

TIMEOUT_S = 2.0

Sender = Callable[[bytes, str], None]
"""Posts one body with one bearer token (raises on failure)."""


def https_sender(url: str, ca_pem: str | None, timeout_s: float = TIMEOUT_S) -> Sender:
    """A Sender that POSTs JSON to `url`, trusting only `ca_pem` when given."""
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()

    def send(body: bytes, token: str) -> None:
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            response.read(1024)

    return send


class ProgressPusher:
    """Sends the latest submitted report from a daemon thread; at most one request at a time."""

    def __init__(self, send: Sender, token_file: str, attempt: int = 0) -> None:
        self.send = send
        self.token_file = token_file
        self.attempt = attempt
        self.sent = 0
        self.failed = 0
        self._latest: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dmlt-progress-push", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProgressPusher | None:
        """The pusher the operator configured for this Pod; None outside one (or misconfigured)."""
        env = os.environ if environ is None else environ
        url = env.get(PROGRESS_URL_ENV, "").strip()
        token_file = env.get(PROGRESS_TOKEN_FILE_ENV, "").strip()
        if not (url and token_file):
            return None
        try:
            send = https_sender(url, env.get(PROGRESS_CA_ENV, "").strip() or None)
            attempt = int(env.get(ATTEMPT_ENV, "0") or 0)
        except (ssl.SSLError, ValueError) as exc:
            log.warning("Progress push disabled: %s", exc)
            return None
        return cls(send, token_file, attempt)

    def submit(self, event: Mapping[str, Any]) -> None:
        """Queue `event` (an epoch event) for sending, replacing any report not sent yet."""
        with self._lock:
            self._latest = {**event, "attempt": self.attempt}
            self._idle.clear()
        self._wake.set()

    def close(self, timeout_s: float = TIMEOUT_S) -> None:
        """Give the last report up to `timeout_s` to go out, then stop."""
        self._idle.wait(timeout_s)
        self._closed = True
        self._wake.set()

    def _take(self) -> dict[str, Any] | None:
        with self._lock:
            report, self._latest = self._latest, None
            if report is None:
                self._idle.set()
            return report

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            while (report := self._take()) is not None:
                self._push(report)

    def _push(self, report: dict[str, Any]) -> None:
        try:
            with open(self.token_file, encoding="utf-8") as f:
                token = f.read().strip()
            self.send(json.dumps(report, sort_keys=True).encode(), token)
            self.sent += 1
        except Exception as exc:  # never a reason to stop training
            self.failed += 1
            if self.failed == 1:
                log.warning("Could not push progress (later failures are not logged): %s", exc)
