"""`hack/cluster.sh env`: the lines README's `eval "$(hack/cluster.sh env)"` runs.

The cluster is replaced by a state directory laid out as `up` leaves it, with a fake kubectl
that answers the readiness probe `env` makes (`kubectl --kubeconfig FILE ... get --raw /readyz`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = ROOT / "hack" / "cluster.sh"

# exits 0 only for the readiness probe with the kubeconfig it was told about
FAKE_KUBECTL = """#!/bin/sh
case "$*" in
  *"--kubeconfig $EXPECTED_KUBECONFIG "*"get --raw /readyz"*) exit "${READYZ_RC:-0}" ;;
esac
echo "fake kubectl: unexpected arguments: $*" >&2
exit 2
"""


def _state_dir(tmp_path: Path) -> Path:
    """A state dir as `up` leaves it: admin kubeconfig, tools linked under bin/."""
    state = tmp_path / "state"
    (state / "bin").mkdir(parents=True)
    (state / "admin.kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    for tool, body in {"kubectl": FAKE_KUBECTL, "helm": "#!/bin/sh\necho fake helm\n"}.items():
        path = state / "bin" / tool
        path.write_text(body)
        path.chmod(0o755)
    return state


def _run(state: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "DMLT_STATE_DIR": str(state),
        "EXPECTED_KUBECONFIG": str(state / "admin.kubeconfig"),
        **env,
    }
    return subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=30
    )


def test_env_prints_path_and_kubeconfig_exports(tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    result = _run(state, f"{CLUSTER_SH} env")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f'export PATH="{state}/bin:$PATH"',
        f'export KUBECONFIG="{state}/admin.kubeconfig"',
    ]


def test_eval_of_env_puts_the_clusters_tools_first_on_path(tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    result = _run(
        state,
        f'eval "$({CLUSTER_SH} env)" && command -v kubectl && command -v helm && echo "$KUBECONFIG"',
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{state}/bin/kubectl",
        f"{state}/bin/helm",
        f"{state}/admin.kubeconfig",
    ]


@pytest.mark.parametrize("case", ["no state", "apiserver not ready"])
def test_env_fails_with_one_line_when_the_cluster_is_not_up(tmp_path: Path, case: str) -> None:
    state = tmp_path / "absent" if case == "no state" else _state_dir(tmp_path)
    result = _run(state, f"{CLUSTER_SH} env", READYZ_RC="1")
    assert result.returncode == 1
    assert result.stdout == "", "nothing for eval to run"
    assert result.stderr.splitlines() == [
        "hack/cluster.sh env: the local cluster is not up (start it with: sudo hack/cluster.sh up)"
    ]
