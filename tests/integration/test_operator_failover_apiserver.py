"""Two operator replicas, one active, against a real kube-apiserver (no kubelet: the test plays it).

Both run as the chart's ServiceAccount with leader election on, the chart's Lease name and
namespace and the chart's default timings, so the chart's Role is proven enough too. What is
shown: only the Lease holder acts (a job's Pods created once, the standby silent); after a
SIGKILL of the leader mid-job the standby takes the Lease over and carries the job on within
15 s; after a SIGTERM the leader releases the Lease and the handover is faster. The measured
handover times are printed (pytest -s) and recorded in the test's output.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from tests.helpers.apiserver import (
    APISERVER_MARKS,
    Operator,
    apply_job,
    events_of,
    get_job,
    play_kubelet,
    pods_of,
    wait_phase,
    wait_pods,
    wait_until,
)
from tests.helpers.control_plane import free_port

pytestmark = APISERVER_MARKS

LEASE_NS, LEASE_NAME = "dmlt", "dmlt-operator"  # the chart's, at its defaults
HANDOVER_LIMIT_S = 15


@pytest.fixture(scope="module")
def replicas(cluster):
    ops = {
        name: Operator(
            cluster,
            name,
            DMLT_LEADER_ELECTION="true",
            DMLT_LEASE_NAMESPACE=LEASE_NS,
            DMLT_LEASE_NAME=LEASE_NAME,
            DMLT_POD_NAME=name,
            DMLT_METRICS_PORT=str(free_port()),
        )
        for name in ("op-a", "op-b")
    }
    for op in ops.values():
        op.start()  # returns once /healthz answers: the standby's too
    yield ops
    for op in ops.values():
        op.stop()


def holder(cluster) -> str:
    """The replica (its DMLT_POD_NAME) that holds the Lease, "" for none."""
    from kubernetes import client

    lease = client.CoordinationV1Api(cluster["api"]).read_namespaced_lease(LEASE_NAME, LEASE_NS)
    return (lease.spec.holder_identity or "").rsplit("_", 1)[0]


def leader_gauge(op: Operator) -> float:
    url = f"http://127.0.0.1:{op.env['DMLT_METRICS_PORT']}/metrics"
    text = urllib.request.urlopen(url, timeout=2).read().decode()
    (line,) = (line for line in text.splitlines() if line.startswith("dmlt_operator_leader "))
    return float(line.split()[1])


def elected(cluster, replicas) -> tuple[Operator, Operator]:
    wait_until(lambda: holder(cluster) in replicas, 30, "a replica to hold the Lease")
    leader = replicas[holder(cluster)]
    (standby,) = (op for op in replicas.values() if op is not leader)
    return leader, standby


def seconds_until(check, since: float, timeout: float, what: str) -> float:
    """Seconds from `since` (time.monotonic()) until `check()` holds, polled every 0.1 s."""
    wait_until(check, timeout, what, interval=0.1)
    return time.monotonic() - since


def start_running(cluster, name: str) -> dict[str, str]:
    """A 2-rank job brought to Running; its Pods' uids."""
    apply_job(cluster, name, runPolicy={"backoffLimit": 2})
    wait_pods(cluster, name, 2, attempt=0)
    for pod in pods_of(cluster, name):
        play_kubelet(cluster, pod, "running")
    wait_phase(cluster, name, "Running")
    return {n: p.metadata.uid for n, p in pods_of(cluster, name).items()}


def test_the_chart_role_lets_a_standby_watch_the_lease(cluster, replicas):
    import kubernetes
    from dmlt_operator.core.kube import LeaseApi

    elected(cluster, replicas)
    as_operator = kubernetes.config.new_client_from_config(config_file=str(cluster["op_kubeconfig"]))
    lease = next(LeaseApi(LEASE_NS, LEASE_NAME, 5, as_operator).watch("", 2))
    assert lease.holder.rsplit("_", 1)[0] in replicas
    assert not any("Lease watch failed" in op.log_text() for op in replicas.values())


def test_one_replica_acts_and_a_killed_leader_is_replaced_within_15s(cluster, replicas):
    leader, standby = elected(cluster, replicas)
    wait_until(lambda: leader_gauge(leader) == 1 and leader_gauge(standby) == 0, 10, "leader gauges")
    start_running(cluster, "fo")
    assert events_of(cluster, "fo").count("CreatedPods") == 1
    assert "itest/fo" not in standby.log_text() and "Standing by" in standby.log_text()

    leader.kill()  # mid-job, no clean-up: the Lease stays held until it expires
    killed = time.monotonic()
    play_kubelet(cluster, "fo-1", "failed")  # the new leader must gang-restart the job
    lease_s = seconds_until(lambda: holder(cluster) == standby.name, killed, 30, "the Lease to move")
    write_s = seconds_until(
        lambda: get_job(cluster, "fo")["status"].get("restarts") == 1, killed, 30, "the new leader's restart"
    )
    print(f"\nSIGKILL handover: Lease taken after {lease_s:.1f}s, first job write after {write_s:.1f}s")
    assert write_s < HANDOVER_LIMIT_S, (lease_s, write_s)

    wait_pods(cluster, "fo", 2, attempt=1)
    for pod in pods_of(cluster, "fo"):
        play_kubelet(cluster, pod, "succeeded")
    job = wait_phase(cluster, "fo", "Succeeded")
    assert job["status"]["restarts"] == 1
    assert events_of(cluster, "fo").count("CreatedPods") == 2  # one per attempt, by one replica
    assert leader_gauge(standby) == 1
    # kopf serves /healthz on the port the standby served it on.
    assert urllib.request.urlopen(f"http://127.0.0.1:{standby.health}/healthz", timeout=2).status == 200

    leader.start()  # back as a standby: it must not take the Lease from a live leader
    time.sleep(5)
    assert holder(cluster) == standby.name


def test_a_terminated_leader_releases_the_lease(cluster, replicas):
    leader, standby = elected(cluster, replicas)
    uids = start_running(cluster, "term")

    signalled = time.monotonic()
    leader.stop()  # SIGTERM, and wait for the exit: every write after this is the new leader's
    stopped_s = time.monotonic() - signalled
    for pod in pods_of(cluster, "term"):
        play_kubelet(cluster, pod, "succeeded")
    lease_s = seconds_until(lambda: holder(cluster) == standby.name, signalled, 30, "the Lease to move")
    write_s = seconds_until(
        lambda: get_job(cluster, "term")["status"].get("phase") == "Succeeded", signalled, 30,
        "the new leader's status write",
    )  # fmt: skip
    print(f"\nSIGTERM handover: old leader exited after {stopped_s:.1f}s, Lease taken after "
          f"{lease_s:.1f}s, first job write after {write_s:.1f}s")  # fmt: skip
    assert "Released the Lease" in leader.log_text()
    assert write_s < HANDOVER_LIMIT_S and lease_s < stopped_s + 5, (stopped_s, lease_s, write_s)
    assert {n: p.metadata.uid for n, p in pods_of(cluster, "term").items()} == uids
    assert events_of(cluster, "term").count("CreatedPods") == 1
    leader.start()
