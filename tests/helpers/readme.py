"""README.md as a script: the shell blocks of one section, run as written by bash with the
environment a reader has after `eval "$(hack/cluster.sh env)"` (the local cluster) or with the
environment's KUBECONFIG (kind), and what their commands name (release, namespaces, ports)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass

from tests.helpers.names import ROOT

README = ROOT / "README.md"
ENV_LINE = 'eval "$(hack/cluster.sh env)"'


def section_blocks(title: str, text: str | None = None) -> list[str]:
    """The ```bash blocks under the `## title` heading, up to the next `## ` heading."""
    text = README.read_text() if text is None else text
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    blocks = re.findall(r"^```bash\n(.*?)^```", match.group(1), flags=re.M | re.S)
    assert blocks, f"README.md's '{title}' section has no ```bash blocks"
    return blocks


def commands(block: str) -> list[list[str]]:
    """Each command line of a block as words (comments dropped)."""
    out = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def is_env_block(block: str) -> bool:
    return [line.split("#")[0].strip() for line in block.strip().splitlines()] == [ENV_LINE]


def is_port_forward_block(block: str) -> bool:
    return any("port-forward" in words for words in commands(block))


def option(words: list[str], *names: str) -> str | None:
    for i, word in enumerate(words):
        if word in names and i + 1 < len(words):
            return words[i + 1]
        for name in names:
            if name.startswith("--") and word.startswith(name + "="):
                return word.split("=", 1)[1]
    return None


def reader_env() -> dict[str, str]:
    """The environment a reader has: `eval "$(hack/cluster.sh env)"` when the local cluster is
    up (helm and the cluster's kubectl on PATH, its KUBECONFIG), else this process's (kind:
    KUBECONFIG set, helm and kubectl on PATH)."""
    env = dict(os.environ)
    probe = subprocess.run(
        ["bash", "-c", f"{ENV_LINE} && printf '%s\\n%s\\n' \"$PATH\" \"$KUBECONFIG\""],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    if probe.returncode == 0:
        path, kubeconfig = probe.stdout.splitlines()[-2:]
        env.update(PATH=path, KUBECONFIG=kubeconfig)
    else:
        assert env.get("KUBECONFIG"), (
            f"`{ENV_LINE}` failed ({probe.stderr.strip()}) and KUBECONFIG is not set: start the "
            "local cluster (sudo hack/cluster.sh up) or point KUBECONFIG at a kind cluster"
        )
    for tool in ("helm", "kubectl"):
        found = subprocess.run(
            ["bash", "-c", f"command -v {tool}"], env=env, capture_output=True, check=False
        )
        assert found.returncode == 0, f"{tool} is not on the reader's PATH ({env['PATH']})"
    return env


@dataclass(frozen=True, slots=True)
class Shell:
    """Runs README text with bash, as a reader would paste it, in the repository root."""

    env: dict[str, str]

    def run(self, script: str, timeout: float = 600) -> str:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, (
            f"README commands failed (exit {proc.returncode}):\n{script}\nstdout:\n{proc.stdout}\n"
            f"stderr:\n{proc.stderr}"
        )
        return proc.stdout

    def kubectl(self, *args: str, timeout: float = 60) -> str:
        return self.run(shlex.join(["kubectl", *args]), timeout=timeout)
