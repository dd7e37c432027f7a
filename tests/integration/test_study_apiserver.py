"""A TuningStudy run by the real operator against a real kube-apiserver and PostgreSQL, with no
kubelet (the test plays it) and no timer: the study starts its trials on its creation, a trial
whose Pod ended is told and replaced on that job's events alone, every reported result ends in
the database once, the study succeeds with exactly maxTrials, and deleting it drops the Optuna
study.

Needs kube-apiserver and etcd (see test_operator_apiserver.py) and PostgreSQL (initdb, pg_ctl).
"""

from __future__ import annotations

import time

import optuna
import pytest
from dmlt_operator.tuningstudy.store import StudyStore

from tests.helpers.apiserver import APISERVER_MARKS, NS, Operator, play_kubelet, pods_of, wait_until

pytestmark = APISERVER_MARKS

STUDY = "st"
SECRET = "st-db"


@pytest.fixture(scope="module")
def study_operator(cluster):
    # No MLflow here: without a tracking URI the study needs no parent run.
    op = Operator(cluster, name="study-operator", DMLT_DEFAULT_TRACKING_URI="")
    op.start()
    yield op
    op.stop()


def trial_jobs(cluster) -> dict[str, dict]:
    jobs = cluster["custom"].list_namespaced_custom_object(
        "dmlt.io", "v1alpha1", NS, "trainingjobs", label_selector=f"dmlt.io/study={STUDY}"
    )
    return {j["metadata"]["name"]: j for j in jobs["items"]}


def get_study(cluster) -> dict:
    return cluster["custom"].get_namespaced_custom_object("dmlt.io", "v1alpha1", NS, "tuningstudies", STUDY)


def apply_study(cluster, url: str) -> None:
    cluster["core"].create_namespaced_secret(
        NS, {"metadata": {"name": SECRET}, "stringData": {"url": url}}
    )
    body = {
        "apiVersion": "dmlt.io/v1alpha1", "kind": "TuningStudy",
        "metadata": {"name": STUDY, "namespace": NS},
        "spec": {
            "objective": {"metric": "val_auc", "direction": "maximize"},
            "parameters": [{"name": "lr", "type": "float", "min": 0.001, "max": 0.1, "log": True}],
            "algorithm": {"name": "random", "seed": 1},
            "maxTrials": 3, "parallelism": 2, "maxFailedTrials": 0,
            "storage": {"secretRef": {"name": SECRET}},
            "trialTemplate": {"image": "dmlt-trainer:dev", "replicas": 1, "trainer": {"epochs": 1}},
        },
    }  # fmt: skip
    cluster["custom"].create_namespaced_custom_object("dmlt.io", "v1alpha1", NS, "tuningstudies", body)


def report_and_finish(cluster, store: StudyStore, url: str, job: str, value: float) -> None:
    """What a trial's trainer does (report the objective to the study), then its Pod ends."""
    number = int(job.rsplit("-t", 1)[1])
    storage = store.storage(url)
    study = optuna.load_study(study_name=f"{NS}.{STUDY}", storage=storage)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    trial = optuna.Trial(study, trial_id)
    trial.set_user_attr("dmlt.outcome", "completed")
    trial.set_user_attr("dmlt.value", value)
    (pod,) = pods_of(cluster, job)
    play_kubelet(cluster, pod, "running")
    play_kubelet(cluster, pod, "succeeded")


def test_a_study_runs_on_events_and_replaces_a_finished_trial_at_once(cluster, study_operator, postgres):
    url = postgres.create_database("study_apiserver")
    store = StudyStore(pool_size=1, connect_timeout_s=5)
    try:
        apply_study(cluster, url)
        wait_until(lambda: len(trial_jobs(cluster)) == 2, 30, "the first two trial jobs")
        assert sorted(trial_jobs(cluster)) == ["st-t0", "st-t1"]
        for job in ("st-t0", "st-t1"):
            wait_until(lambda job=job: len(pods_of(cluster, job)) == 1, 30, f"the Pod of {job}")
        wait_until(lambda: get_study(cluster).get("status", {}).get("phase") == "Running", 30, "Running")

        finished = time.monotonic()
        report_and_finish(cluster, store, url, "st-t0", 0.8)
        wait_until(lambda: "st-t2" in trial_jobs(cluster), 30, "the replacement trial job")
        replaced = time.monotonic() - finished
        # The goal is 2 s on an idle operator; a busy 2-core test machine gets slack. A timer
        # would not be faster: it was 5 s.
        assert replaced < 10, f"replaced after {replaced:.1f} s"
        # The replacement is created before the status that counts the finished trial is written.
        wait_until(lambda: get_study(cluster)["status"]["trials"]["completed"] == 1, 30, "1 completed")
        status = get_study(cluster)["status"]
        assert status["trials"]["completed"] == 1 and status["bestTrial"]["number"] == 0

        wait_until(lambda: len(pods_of(cluster, "st-t2")) == 1, 30, "the Pod of st-t2")
        report_and_finish(cluster, store, url, "st-t1", 0.7)
        report_and_finish(cluster, store, url, "st-t2", 0.9)
        wait_until(lambda: get_study(cluster).get("status", {}).get("phase") == "Succeeded", 30, "Succeeded")
        status = get_study(cluster)["status"]
        assert status["trialsDone"] == "3/3" and status["bestTrial"]["number"] == 2
        assert sorted(trial_jobs(cluster)) == ["st-t0", "st-t1", "st-t2"]  # none twice, none more
        states = [t.state.name for t in optuna.load_study(study_name=f"{NS}.{STUDY}", storage=url).trials]
        assert states == ["COMPLETE"] * 3

        cluster["custom"].delete_namespaced_custom_object("dmlt.io", "v1alpha1", NS, "tuningstudies", STUDY)
        wait_until(lambda: _gone(cluster), 30, "the study (its finalizer removed)")
        assert f"{NS}.{STUDY}" not in optuna.get_all_study_names(storage=url)
        assert "Traceback" not in study_operator.log_text()
    finally:
        store.close()


def _gone(cluster) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        get_study(cluster)
    except ApiException as exc:
        return exc.status == 404
    return False
