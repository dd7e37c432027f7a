"""A TuningStudy whose trials go through the real Kueue (`DMLT_KUEUE=1 hack/cluster.sh up`):
`trialTemplate.queueName` queues every trial. With a ClusterQueue of one trial's CPU at a time
and `parallelism: 2`, the study completes exactly `maxTrials`, no trial fails or counts against
`maxFailedTrials` while it waits, and never more than one trial Pod runs at once: the study's
parallelism is a ceiling, the quota decides the rest.

The chart is installed with its PostgreSQL (the study's Optuna storage).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dmlt_operator.trainingjob import queueing as q
from kubernetes import client

from tests.helpers.chart import installed_chart
from tests.helpers.kueue import cluster_queue, kueue_api
from tests.helpers.studies import StudyWatch, Tuning, phase, study_manifest

pytestmark = pytest.mark.e2e

STUDY_TIMEOUT = 1800.0


@pytest.fixture(scope="module")
def tuning(api_client: client.ApiClient, namespace: str) -> Iterator[Tuning]:
    values = {"operator": {"studyReconcileIntervalSeconds": 3}}
    with installed_chart(api_client, namespace, release="dmlt-kueue-study", values=values) as installed:
        yield Tuning(installed)


@pytest.fixture(scope="module")
def queues(api_client: client.ApiClient, namespace: str, tuning: Tuning) -> Iterator[dict[str, str]]:
    with cluster_queue(kueue_api(api_client), namespace, cpu="1") as names:
        yield names


def queued_study(name: str, priority: str) -> dict[str, Any]:
    manifest = study_manifest(name, maxTrials=3, parallelism=2, maxFailedTrials=1)
    # Kueue's priority label on the study: every trial job (and so its Workload) gets it
    manifest["metadata"].setdefault("labels", {})[q.PRIORITY_CLASS_LABEL] = priority
    template = manifest["spec"]["trialTemplate"]
    template["queueName"] = "team"
    template["resources"] = {"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"memory": "1536Mi"}}
    template["trainer"] = {**template["trainer"], "nSamples": 5000, "epochs": 2, "hiddenDims": [16]}
    return manifest


@pytest.mark.timeout(int(STUDY_TIMEOUT) + 300)
def test_a_queued_study_completes_exactly_max_trials_one_at_a_time(tuning: Tuning, queues) -> None:
    manifest = queued_study("queued-study", queues["low"])
    name = manifest["metadata"]["name"]
    tuning.create_study(manifest)
    with StudyWatch(tuning, name) as watch:
        columns, study = watch.until(phase("Succeeded"), STUDY_TIMEOUT, f"{name} to succeed")
        watch.sample()
    print(
        f"{name}: max {watch.max_active_jobs} trial jobs, {watch.max_running_pods} trial Pods running at once"
    )
    print("\n".join(watch.seen))
    assert columns["Trials"] == "3/3", columns
    assert watch.max_running_pods == 1, (
        f"{watch.max_running_pods} trial Pods ran at once under a 1-trial quota"
    )
    assert watch.max_active_jobs <= 2
    jobs = tuning.trial_jobs(name)
    phases = sorted((j.get("status") or {}).get("phase") for j in jobs)
    assert phases == ["Succeeded"] * 3, phases
    assert all(j["spec"].get("queueName") == "team" for j in jobs)
    assert all(j["metadata"]["labels"].get(q.PRIORITY_CLASS_LABEL) == queues["low"] for j in jobs), [
        j["metadata"]["labels"] for j in jobs
    ]
    workloads = tuning.custom.list_namespaced_custom_object(
        q.KUEUE_GROUP, q.KUEUE_VERSION, tuning.ns, q.WORKLOAD_PLURAL
    )["items"]
    refs = {(w["spec"].get("priorityClassRef") or {}).get("name") for w in workloads}
    assert len(workloads) == 3 and refs == {queues["low"]}, refs
    assert all(len(uids) == 1 for uids in watch.job_uids.values()), watch.job_uids
    assert study["status"]["trials"]["failed"] == 0, study["status"]
