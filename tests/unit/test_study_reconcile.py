"""The pure study planner, driven tick by tick against a simulated database and API.

`World` holds what the database (trials) and the apiserver (trial jobs) hold, changes them only
the way the handler does when it carries out a plan, and lets the "trainers" move jobs along.
Crashes are plans carried out only in part; lost status is a status that was never written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from dmlt_operator.tuningstudy import plan as sr
from dmlt_operator.tuningstudy import trials as tr
from dmlt_operator.tuningstudy.build import trial_job_name

from tests.helpers.study_plans import REF, T0, spec

pytestmark = pytest.mark.unit

Outcome = tuple[str, float | None]


def default_outcome(number: int) -> Outcome:
    return ("pruned", None) if number % 3 == 2 else ("completed", 0.8 + number / 100)


class World:
    def __init__(self, study_spec, outcome: Callable[[int], Outcome] = default_outcome, **plan_kwargs: Any):
        self.spec = study_spec
        self.outcome = outcome
        self.plan_kwargs = plan_kwargs
        self.trials: dict[int, tr.TrialRecord] = {}
        self.jobs: dict[int, tr.TrialJob] = {}
        self.status: dict[str, Any] = {}
        self.now = T0
        self.told: list[tuple[int, str]] = []
        self.created: list[int] = []
        self.max_active = 0
        self.events: list[sr.Event] = []
        self.last: sr.StudyPlan | None = None

    # ---- the operator
    def plan(self) -> sr.StudyPlan:
        return sr.plan(REF, self.spec, self.status, list(self.trials.values()), list(self.jobs.values()),
                       self.now, **self.plan_kwargs)  # fmt: skip

    def tick(self, crash: str | None = None) -> sr.StudyPlan:
        """One reconcile; `crash` stops it after "tell", after "ask" (before the jobs of the
        new trials), or before "status" is written."""
        self.now += timedelta(seconds=5)
        plan = self.last = self.plan()
        for tell in plan.tells:
            trial = self.trials[tell.number]
            if trial.state == tr.T_RUNNING:  # the storage's own check
                self.trials[tell.number] = replace(trial, state=tell.state, value=tell.value)
                self.told.append((tell.number, tell.state))
        if crash == "tell":
            return plan
        for name in plan.delete_jobs:
            number = next(n for n, j in self.jobs.items() if j.name == name)
            self.jobs[number] = replace(self.jobs[number], deleting=True)
        for number in plan.create_trials:
            self.create_job(number)
        asked = []
        for _ in range(plan.ask):
            number = len(self.trials)
            started = (self.now + timedelta(microseconds=number)).isoformat()
            self.trials[number] = tr.TrialRecord(
                number, tr.T_RUNNING, {"lr": 0.001 * (number + 1)}, started=started
            )
            asked.append(number)
        if crash == "ask":
            return plan
        for number in asked:
            self.create_job(number)
        self.events += plan.events
        if crash != "status":
            self.status = plan.status
        self.count_active()
        return plan

    def create_job(self, number: int) -> None:
        if number in self.jobs:
            return  # 409: exists
        started = self.trials[number].started
        self.jobs[number] = tr.TrialJob(
            trial_job_name(REF.name, number), number, REF.uid, uid=f"j{number}", trial_started=started
        )
        self.created.append(number)

    def count_active(self) -> None:
        active = sum(1 for j in self.jobs.values() if j.active)
        self.max_active = max(self.max_active, active)

    # ---- the cluster and the trainers
    def step_trainers(self) -> None:
        for number, job in list(self.jobs.items()):
            if job.deleting:
                del self.jobs[number]
            elif job.phase == "":
                self.jobs[number] = replace(job, phase="Running")
            elif job.phase == "Running":
                self.finish(number)
        self.count_active()

    def finish(self, number: int) -> None:
        kind, value = self.outcome(number)
        job = self.jobs[number]
        trial = self.trials[number]
        if kind == "failed":
            self.jobs[number] = replace(job, phase="Failed", message="BackoffLimitExceeded")
            return
        attrs = {"dmlt.outcome": kind, "dmlt.epochs_run": 2 if kind == "pruned" else 5,
                 "dmlt.mlflow_run_id": f"run{number}", "dmlt.model_uri": f"models:/m-{number}"}  # fmt: skip
        if value is not None:
            attrs["dmlt.value"] = value
        self.trials[number] = replace(trial, user_attrs=attrs, intermediate={0: 0.5, 1: 0.6})
        self.jobs[number] = replace(
            job, phase="Succeeded", result="pruned" if kind == "pruned" else "completed"
        )

    def run(self, max_ticks: int = 200, crash_every: int = 0, crash: str = "ask") -> None:
        for i in range(max_ticks):
            self.tick(crash if crash_every and i % crash_every == crash_every - 1 else None)
            if self.status.get("phase") in sr.TERMINAL:
                return
            self.step_trainers()
        raise AssertionError(f"not finished after {max_ticks} ticks: {self.status}")

    # ---- checks
    def counts(self) -> Counter:
        return Counter(t.state for t in self.trials.values())

    def assert_consistent(self) -> None:
        assert self.max_active <= self.spec.parallelism, f"{self.max_active} jobs active at once"
        assert len(self.created) == len(set(self.created)), f"a trial job was created twice: {self.created}"
        numbers = [n for n, _ in self.told]
        assert len(numbers) == len(set(numbers)), f"a trial was told twice: {self.told}"
        assert sorted(self.trials) == list(range(len(self.trials)))


def test_a_study_finishes_with_exactly_max_trials_never_more_than_parallelism_running():
    w = World(spec())
    w.run()
    w.assert_consistent()
    counts = w.counts()
    assert counts[tr.T_COMPLETE] + counts[tr.T_PRUNED] == 8 and counts[tr.T_RUNNING] == 0
    assert counts[tr.T_PRUNED] == 2  # trials 2 and 5
    assert w.max_active == 2
    s = w.status
    assert s["phase"] == sr.SUCCEEDED and s["trialsDone"] == "8/8"
    assert s["trials"] == {"running": 0, "completed": 6, "pruned": 2, "failed": 0}
    assert s["bestTrial"]["number"] == 7 and s["bestTrial"]["value"] == pytest.approx(0.87)
    assert s["bestTrial"]["trainingJob"] == "s-t7" and s["bestTrial"]["mlflowRunId"] == "run7"
    assert s["bestTrial"]["params"] == {"lr": pytest.approx(0.008)}
    assert s["studyName"] == "ns.s" and s["startTime"] and s["completionTime"]
    assert {e.reason for e in w.events} >= {
        "Running",
        "TrialCompleted",
        "TrialPruned",
        "NewBestTrial",
        "Succeeded",
    }


def test_failed_trials_are_replaced_and_do_not_count():
    w = World(spec(), outcome=lambda n: ("failed", None) if n in (1, 4) else ("completed", 0.5 + n / 100))
    w.run()
    w.assert_consistent()
    counts = w.counts()
    assert counts[tr.T_COMPLETE] == 8 and counts[tr.T_FAIL] == 2 and len(w.trials) == 10
    assert w.status["phase"] == sr.SUCCEEDED and w.status["trials"]["failed"] == 2


def test_too_many_failures_fail_the_study_and_stop_its_running_trials():
    fail_two = lambda n: ("failed", None) if n in (0, 1) else ("completed", 0.5)  # noqa: E731
    w = World(spec(maxFailedTrials=1), outcome=fail_two, tracking=True, parent_run_id="p")
    w.run()
    w.assert_consistent()
    assert w.status["phase"] == sr.FAILED
    assert "more than maxFailedTrials (1)" in w.status["message"]
    assert w.counts()[tr.T_RUNNING] == 0  # nothing left RUNNING in the database
    assert w.last.finalize is not None and w.last.finalize.run_status == "FAILED"
    assert w.last.finalize.register is None
    cond = {c["type"]: c for c in w.status["conditions"]}
    assert cond["Failed"]["status"] == "True" and cond["ModelRegistered"]["reason"] == "StudyFailed"


def test_failure_stops_trials_that_are_still_running():
    w = World(spec(maxFailedTrials=0, parallelism=2, maxTrials=4))
    w.tick()  # asks trials 0 and 1
    w.step_trainers()  # both Running
    w.jobs[0] = replace(w.jobs[0], phase="Failed", message="boom")
    plan = w.tick()
    assert [(t.number, t.state) for t in plan.tells] == [(0, tr.T_FAIL), (1, tr.T_FAIL)]
    assert plan.delete_jobs == ["s-t1"] and plan.ask == 0
    assert w.status["phase"] == sr.FAILED


@pytest.mark.parametrize("crash", ["ask", "tell", "status"])
def test_crashes_at_any_point_lose_and_duplicate_nothing(crash):
    w = World(spec())
    w.run(crash_every=2, crash=crash)
    w.assert_consistent()
    counts = w.counts()
    assert counts[tr.T_COMPLETE] + counts[tr.T_PRUNED] == 8 and len(w.trials) == 8
    assert w.status["phase"] == sr.SUCCEEDED


def test_restart_after_ask_before_create_creates_the_jobs_and_asks_no_more():
    w = World(spec())
    first = w.tick(crash="ask")
    assert first.ask == 2 and not w.jobs  # asked, but the operator stopped before the jobs
    second = w.tick()
    assert second.create_trials == [0, 1] and second.ask == 0
    assert sorted(w.jobs) == [0, 1] and len(w.trials) == 2
    assert w.status["trials"]["running"] == 2


def test_a_finished_job_is_told_once_even_when_status_was_lost():
    w = World(spec())
    w.tick()
    w.step_trainers()
    w.step_trainers()  # both trials finished
    plan = w.tick(crash="tell")  # told, then the operator stopped before anything else
    assert [t.number for t in plan.tells] == [0, 1]
    again = w.tick()
    assert again.tells == []  # the database says they are finished
    assert again.ask == 2 and sorted(w.jobs) == [0, 1, 2, 3]
    assert [n for n, _ in w.told] == [0, 1]


def test_the_status_alone_is_never_trusted():
    w = World(spec())
    w.run()
    w.status = {}  # status lost (e.g. the object restored from a backup)
    plan = w.tick()
    assert plan.ask == 0 and plan.tells == [] and plan.create_trials == []
    assert w.status["phase"] == sr.SUCCEEDED and w.status["trialsDone"] == "8/8"


def test_a_second_identical_tick_changes_nothing():
    w = World(spec())
    w.tick()
    w.step_trainers()
    w.tick()
    plan = w.plan()
    assert sr.status_delta(w.status, plan.status) == {}
    assert plan.ask == 0 and plan.create_trials == [] and plan.tells == [] and plan.events == []


def test_a_deleted_trial_job_is_recreated():
    w = World(spec())
    w.tick()
    w.step_trainers()
    del w.jobs[1]  # someone deleted it (or the garbage collector of an earlier object)
    plan = w.tick()
    assert plan.create_trials == [1] and plan.ask == 0
    assert w.created == [0, 1, 1] and w.max_active == 2


def test_stray_jobs_are_deleted_and_hold_their_slot_until_gone():
    w = World(spec())
    w.tick()
    w.step_trainers()
    w.trials[0] = replace(w.trials[0], state=tr.T_FAIL)  # told elsewhere (e.g. optuna CLI)
    plan = w.tick()
    assert plan.delete_jobs == ["s-t0"] and plan.ask == 0
    del w.jobs[0]  # the deletion completes
    assert w.tick().ask == 1


def test_jobs_left_by_a_database_that_lost_its_trials_are_not_mistaken_for_new_ones():
    """PostgreSQL without persistence restarted: the study starts again at trial 0, and the old
    trial jobs (same names, same owner) must neither be told as results nor block forever."""
    w = World(spec())
    w.run()
    old_jobs = dict(w.jobs)
    w.trials = {}  # the database forgot everything
    w.status = {}
    plan = w.tick()
    assert plan.tells == [] and plan.ask == 0 and plan.create_trials == []
    assert sorted(plan.delete_jobs) == sorted(j.name for j in old_jobs.values())
    assert "StaleTrialJobs" in {e.reason for e in plan.events}
    assert "s-t0, s-t1" in w.status["message"] and "earlier study or trial" in w.status["message"]
    w.step_trainers()  # the stale jobs are gone
    plan = w.tick()
    assert plan.ask == 2 and sorted(w.jobs) == [0, 1] and not plan.tells
    w.run()
    assert w.counts()[tr.T_COMPLETE] + w.counts()[tr.T_PRUNED] == 8


def test_jobs_without_the_started_annotation_still_match():
    trial = tr.TrialRecord(0, tr.T_RUNNING, started="2026-01-01T00:00:00")
    assert tr.TrialJob("s-t0", 0, "u").runs(trial)
    assert tr.TrialJob("s-t0", 0, "u", trial_started="2026-01-01T00:00:00").runs(trial)
    assert not tr.TrialJob("s-t0", 0, "u", trial_started="2025-12-31T00:00:00").runs(trial)
    assert not tr.TrialJob("s-t0", 0, "u").runs(None)


def test_jobs_of_another_owner_block_their_name():
    w = World(spec())
    w.trials[0] = tr.TrialRecord(0, tr.T_RUNNING)
    w.jobs[0] = tr.TrialJob("s-t0", 0, "older-study-uid", phase="Running")
    plan = w.tick()
    assert plan.create_trials == [] and plan.ask == 0
    assert "s-t0 of an earlier study or trial" in w.status["message"]


def test_blocked_creates_nothing_but_still_tells():
    w = World(spec())
    w.tick()
    w.step_trainers()
    w.step_trainers()
    w.plan_kwargs = {"blocked": "Waiting for MLflow"}
    plan = w.tick()
    assert [t.number for t in plan.tells] == [0, 1] and plan.ask == 0
    assert w.status["message"].startswith("Waiting for MLflow; ")


def test_parallelism_one_runs_trials_one_at_a_time():
    w = World(spec(parallelism=1, maxTrials=3))
    w.run()
    w.assert_consistent()
    assert w.max_active == 1 and len(w.trials) == 3


def test_raising_max_trials_mid_study_asks_more():
    w = World(spec(maxTrials=2))
    w.tick()
    w.spec = spec(maxTrials=4)
    w.step_trainers()
    w.step_trainers()
    plan = w.tick()
    assert plan.ask == 2 and w.status["trialsDone"] == "2/4"


def test_the_grid_ends_when_it_is_exhausted():
    grid = spec(
        parameters=[{"name": "batchSize", "type": "categorical", "choices": [64, 128, 256]}],
        algorithm={"name": "grid"}, maxTrials=10,
    )  # fmt: skip
    w = World(grid, outcome=lambda n: ("failed", None) if n == 0 else ("completed", 0.7))
    w.run()
    assert len(w.trials) == 3  # never more trials than grid points, failures included
    assert w.status["phase"] == sr.SUCCEEDED
    assert w.status["trialsDone"] == "2/3" and "grid is exhausted" in w.status["message"]


def test_minimize_and_ties_and_fallback_values():
    w = World(spec(objective={"metric": "val_loss", "direction": "minimize"}))
    trials = [
        tr.TrialRecord(0, tr.T_COMPLETE, {"lr": 0.1}, 0.3),
        tr.TrialRecord(1, tr.T_COMPLETE, {"lr": 0.2}, 0.2),
        tr.TrialRecord(2, tr.T_COMPLETE, {"lr": 0.3}, 0.2),
        tr.TrialRecord(3, tr.T_PRUNED, {"lr": 0.4}, 0.01),  # pruned values never win
    ]
    best = sr.best_trial(trials, {t.number: t.state for t in trials}, {t.number: t.value for t in trials},
                         "minimize")  # fmt: skip
    assert best is not None and best.number == 1
    no_attr = tr.TrialRecord(4, tr.T_RUNNING, intermediate={0: 0.5, 1: 0.4, 2: 0.45})
    job = tr.TrialJob("s-t4", 4, "study-uid", phase="Succeeded", result="completed")
    assert sr.decide_result(no_attr, job, "minimize") == sr.Tell(
        4, tr.T_COMPLETE, 0.4, "trial 4 completed: 0.4"
    )
    assert sr.decide_result(no_attr, job, "maximize").value == 0.5
    silent = tr.TrialRecord(5, tr.T_RUNNING)
    assert sr.decide_result(silent, job, "maximize").state == tr.T_FAIL
    pruned_by_job = tr.TrialRecord(6, tr.T_RUNNING)
    assert sr.decide_result(pruned_by_job, replace(job, result="pruned"), "maximize").state == tr.T_PRUNED
    assert w.spec.objective.direction == "minimize"


def test_finalize_registers_the_best_model_once_tracking_is_on():
    w = World(spec(maxTrials=2), tracking=True, parent_run_id="parent", model_name="my-model")
    w.run()
    final = w.last.finalize
    assert final is not None and final.run_status == "FINISHED"
    assert final.register == sr.RegisterModel("my-model", "models:/m-1", "run1", 1, pytest.approx(0.81))
    assert final.metrics["best_val_auc"] == pytest.approx(0.81) and final.tags["dmlt.best_trial"] == "1"
    assert w.status["parentRunId"] == "parent"
    # The handler records the registration; until then (or after a failure) it is redone.
    assert sr.needs_finalize(w.status)
    failed = [{"type": "ModelRegistered", "status": "False", "reason": sr.MODEL_RETRY_REASON}]
    assert sr.needs_finalize({**w.status, "conditions": failed})
    done = [{"type": "ModelRegistered", "status": "True", "reason": "Registered"}]
    assert not sr.needs_finalize({**w.status, "conditions": done})
    retry = w.plan()
    assert retry.finalize is not None and retry.finalize.register is not None and retry.ask == 0


@pytest.mark.parametrize(
    ("kwargs", "outcome", "reason"),
    [
        ({}, default_outcome, "TrackingDisabled"),
        ({"tracking": True}, lambda n: ("pruned", None), "NoCompletedTrial"),
    ],
)
def test_finalize_without_a_model_settles_the_condition(kwargs, outcome, reason):
    w = World(spec(maxTrials=2), outcome=outcome, **kwargs)
    w.run()
    assert w.last.finalize is not None and w.last.finalize.register is None
    cond = {c["type"]: c for c in w.status["conditions"]}
    assert cond["ModelRegistered"]["reason"] == reason
    assert not sr.needs_finalize(w.status)


def test_no_model_uri_means_no_registration():
    w = World(spec(maxTrials=1, parallelism=1), tracking=True, parent_run_id="p")
    w.tick()
    w.step_trainers()
    w.step_trainers()
    w.trials[0] = replace(w.trials[0], user_attrs={"dmlt.outcome": "completed", "dmlt.value": 0.9})
    w.tick()
    cond = {c["type"]: c for c in w.status["conditions"]}
    assert w.status["phase"] == sr.SUCCEEDED and cond["ModelRegistered"]["reason"] == "NoModel"


def test_summarize_trial_job():
    body = {
        "metadata": {
            "name": "s-t3", "uid": "j3", "labels": {"dmlt.io/trial": "3"},
            "annotations": {"dmlt.io/trial-started": "2026-01-01T00:00:00.000001"},
            "ownerReferences": [{"kind": "TuningStudy", "uid": "study-uid", "controller": True}],
        },
        "status": {"phase": "Succeeded", "result": "pruned", "mlflowRunId": "r3", "message": "ok"},
    }  # fmt: skip
    job = tr.summarize_trial_job(body)
    assert job == tr.TrialJob(
        "s-t3", 3, "study-uid", "j3", "Succeeded", "pruned", "ok", "r3", False, "2026-01-01T00:00:00.000001"
    )
    assert not job.active
    fresh = tr.summarize_trial_job({"metadata": {"name": "s-t4", "labels": {"dmlt.io/trial": "x"}}})
    assert fresh.number is None and fresh.active and fresh.owner_uid is None
    assert tr.summarize_trial_job({"metadata": {}}) is None
