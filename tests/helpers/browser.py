"""The UIs as a user sees them: `kubectl port-forward` started as a reader would start it, and
headless Chromium (Debian's package, driven by playwright, which downloads no browser of its
own) opening the forwarded page. Screenshots go to test-artifacts/ (ignored by git)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.names import ROOT

ARTIFACTS = Path(os.environ.get("DMLT_TEST_ARTIFACTS", ROOT / "test-artifacts"))


def chromium_path() -> str:
    """Debian's chromium (hack/setup.sh installs it as root), or $DMLT_CHROMIUM."""
    path = os.environ.get("DMLT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, (
        "chromium is not installed: `apt-get install chromium` as root (hack/setup.sh does), "
        "or set DMLT_CHROMIUM to a Chromium binary"
    )
    return path


@contextmanager
def chromium_page(width: int = 1400, height: int = 900) -> Iterator[object]:
    """A page of a headless Chromium; playwright's `Page`."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise AssertionError(f"playwright is missing ({exc}): pip install -e '.[dev]'") from None
    with sync_playwright() as pw:
        # --no-sandbox: Chromium's sandbox refuses to run as root, which CI is.
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def screenshot(page: object, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def port_forward(command: list[str], env: dict[str, str], timeout: float = 60) -> Iterator[str]:
    """Run a README `kubectl ... port-forward svc/NAME [LOCAL:]REMOTE` line in the background
    (a reader's second terminal); the local URL once it forwards; stopped afterwards."""
    local = int(command[-1].split(":")[0])
    assert not _port_open(local), f"port {local} is already in use here: `{' '.join(command)}` cannot bind it"
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + timeout
        while not _port_open(local):
            if proc.poll() is not None:
                raise AssertionError(f"`{' '.join(command)}` exited {proc.returncode}: {proc.stdout.read()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"`{' '.join(command)}` did not listen on {local} in {timeout:.0f}s")
            time.sleep(0.5)
        yield f"http://localhost:{local}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
