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
from kubernetes import client

from tests.helpers.chart import installed_chart
from tests.helpers.kueue import cluster_queue, kueue_api
from tests.helpers.studies import StudyWatch, Tuning, phase, study_manifest

pytestmark = pytest.mark.e2e

STUDY_TIMEOUT = 1800.0


@pytest.fixture(scope="module")
def tuning(api_client: client.ApiClient, namespace: str) -> Iterator[Tuning]:
    kueue = kueue_api(api_client)
    values = {"operator": {"studyReconcileIntervalSeconds": 3}}
    with installed_chart(api_client, namespace, release="dmlt-kueue-study", values=values) as installed:
        with cluster_queue(kueue, namespace, cpu="1") as _:
            yield Tuning(installed)


def queued_study(name: str) -> dict[str, Any]:
    manifest = study_manifest(name, maxTrials=3, parallelism=2, maxFailedTrials=1)
    template = manifest["spec"]["trialTemplate"]
    template["queueName"] = "team"
    template["resources"] = {"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"memory": "1536Mi"}}
    template["trainer"] = {**template["trainer"], "nSamples": 5000, "epochs": 2, "hiddenDims": [16]}
    return manifest


@pytest.mark.timeout(int(STUDY_TIMEOUT) + 300)
def test_a_queued_study_completes_exactly_max_trials_one_at_a_time(tuning: Tuning) -> None:
    manifest = queued_study("queued-study")
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
    assert all(len(uids) == 1 for uids in watch.job_uids.values()), watch.job_uids
    assert study["status"]["trials"]["failed"] == 0, study["status"]
