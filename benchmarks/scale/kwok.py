"""kwok's simulated nodes: the binary and stages hack/cluster/build-tools.sh builds, the fake
Node objects, and kwok's command line against a ControlPlane."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from tests.helpers.control_plane import ControlPlane, free_port

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ROOT / "hack" / "cluster" / "versions.env"
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
NODE_ALLOCATABLE = {"cpu": "64", "memory": "512Gi", "pods": "110"}
"""Room for 1,000 two-rank jobs of examples/ddp.yaml (500m, 1Gi per rank) on 20 nodes."""


def pinned_version(text: str, key: str = "KWOK_VERSION") -> str:
    """The value of `KEY=value` in versions.env's text."""
    m = re.search(rf"^{key}=(\S+)", text, re.MULTILINE)
    if m is None:
        raise KeyError(f"{key} not in versions.env")
    return m.group(1)


def kwok_dir() -> Path:
    """$DMLT_CACHE_DIR/kwok/<KWOK_VERSION>: bin/kwok and stages.yaml, built by build-tools.sh."""
    cache = Path(os.environ.get("DMLT_CACHE_DIR", "/var/cache/dmlt"))
    version = pinned_version(VERSIONS.read_text())
    found = cache / "kwok" / version
    if not (found / ".done").exists() or not (found / "stages.yaml").exists():
        raise RuntimeError(f"kwok {version} not built: bash hack/cluster/build-tools.sh kwok")
    return found


def fake_node(name: str) -> dict[str, Any]:
    """A Node kwok manages (its annotation), with no taint: trainer Pods tolerate none."""
    key, value = FAKE_NODE_ANNOTATION
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {key: value},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
        },
        "status": {"allocatable": NODE_ALLOCATABLE, "capacity": NODE_ALLOCATABLE},
    }


def fake_nodes(count: int) -> list[dict[str, Any]]:
    return [fake_node(f"kwok-node-{i:03d}") for i in range(count)]


def kwok_command(binary: Path, kubeconfig: Path, stages: Path, kubelet_port: int) -> list[str]:
    """kwok managing the annotated nodes with kwok's default stages (what kwokctl configures).

    The nodes' address is 127.0.0.1 at a port nothing listens on, so the apiserver's calls to
    a "kubelet" (pods/log) are refused at once rather than hanging on an unroutable address.
    """
    key, value = FAKE_NODE_ANNOTATION
    return [
        str(binary), f"--kubeconfig={kubeconfig}", f"--config={stages}",
        "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={key}={value}",
        "--node-ip=127.0.0.1", f"--node-port={kubelet_port}", "--cidr=10.240.0.1/16",
        "--node-lease-duration-seconds=40",
    ]  # fmt: skip


POD_IPS_BLOCK = re.compile(r"\n[ \t]*\{\{ \$podIPs := .*?\{\{ end \}\}\s*\{\{ end \}\}", re.DOTALL)


def without_pod_ips(stages: str) -> str:
    """kwok's stages without the Pod IP that its pod-ready stage allocates. When kwok's Pod watch
    lags (1,000 jobs at once), it plays pod-ready again on a Pod it already made Ready and
    allocates a second IP; the apiserver refuses the two ("no more than one IP for each IP
    family") and kwok retries with backoff, leaving Pods Pending for up to 30 s. The trainer
    Pods on fake nodes need no address."""
    out, count = POD_IPS_BLOCK.subn("", stages)
    if count != 1:
        raise RuntimeError(f"kwok's stages: expected one Pod IP block in pod-ready, found {count}")
    return out


def start_kwok(plane: ControlPlane, extra_stages: str = "") -> None:
    """kwok with its default stages (less Pod IPs: without_pod_ips), and `extra_stages` (YAML
    documents) after them."""
    found = kwok_dir()
    stages = plane.work / "kwok-stages.yaml"
    text = without_pod_ips((found / "stages.yaml").read_text()).rstrip("\n")
    stages.write_text(text + ("\n---\n" + extra_stages if extra_stages else "\n"))
    argv = kwok_command(found / "bin" / "kwok", plane.admin_kubeconfig, stages, free_port())
    plane.spawn("kwok", argv)
