"""The TuningStudy planner's named steps, one at a time: observe → tell finished trials → best
trial → failure budget → schedule → message."""

from __future__ import annotations

import pytest
from dmlt_operator.core.conditions import COND_CREATED
from dmlt_operator.tuningstudy import plan as sp
from dmlt_operator.tuningstudy import trials as tr

from tests.helpers.study_plans import REF, T0, spec

pytestmark = pytest.mark.unit

STEPS = {"maxTrials": 4, "maxFailedTrials": 1}


def trial(number, state=tr.T_RUNNING, value=None, **attrs):
    return tr.TrialRecord(number, state, {"lr": 0.01}, value, attrs, started=f"t{number}")


def job(number, phase="", owner="study-uid", started=None, **kw):
    return tr.TrialJob(
        f"s-t{number}", number, owner, phase=phase, trial_started=started or f"t{number}", **kw
    )


def observed(trials=(), jobs=(), status=None, s=None, blocked=None):
    b = sp.StudyBuilder(REF, dict(status or {}), T0, sp.MANAGED_STATUS, sp.StudyPlan)
    side = sp.MlflowSide(tracking=True, parent_run_id="p1", blocked=blocked, model_name="m")
    return b, sp.observe(b, s or spec(**STEPS), list(trials), list(jobs), side)


# --------------------------------------------------------------------------- observe


def test_observe_tells_own_stale_and_foreign_jobs_apart():
    b, o = observed(
        [trial(0), trial(1)],
        [job(0), job(1, started="an-earlier-trial-1"), job(2), job(3, owner="another-study")],
    )
    assert set(o.own) == {0}
    assert sorted(j.name for j in o.stale) == ["s-t1", "s-t2"]
    assert o.foreign == {"s-t3"}
    assert b.status["studyName"] == "ns.s" and b.status["parentRunId"] == "p1"
    assert [c["type"] for c in b.conditions] == [COND_CREATED]


# --------------------------------------------------------------------------- tell


def test_tell_finished_trials_tells_only_running_trials_whose_job_ended():
    b, o = observed(
        [trial(0, **{"dmlt.value": 0.9}), trial(1), trial(2, tr.T_COMPLETE, 0.5)],
        [job(0, phase="Succeeded", result="completed"), job(1), job(2, phase="Succeeded")],
    )
    sp.tell_finished_trials(b, o)
    assert [(t.number, t.state, t.value) for t in b.plan.tells] == [(0, tr.T_COMPLETE, 0.9)]
    assert o.states[0] == tr.T_COMPLETE and o.values[0] == 0.9
    assert [e.reason for e in b.plan.events] == ["TrialCompleted"]


def test_stop_stray_jobs_deletes_jobs_of_finished_or_lost_trials():
    b, o = observed([trial(0, tr.T_FAIL)], [job(0), job(5)])
    stray = sp.stop_stray_jobs(b, o)
    assert b.plan.delete_jobs == ["s-t0", "s-t5"]
    assert sorted(j.name for j in stray) == ["s-t0", "s-t5"]
    assert [e.reason for e in b.plan.events] == ["StaleTrialJobs"]


# --------------------------------------------------------------------------- best trial


def test_record_best_announces_only_a_new_best():
    trials = [trial(0, tr.T_COMPLETE, 0.7), trial(1, tr.T_COMPLETE, 0.8)]
    b, o = observed(trials)
    best = sp.record_best(b, o)
    assert best.trial.number == 1 and best.value == 0.8
    assert b.status["bestTrial"]["number"] == 1 and [e.reason for e in b.plan.events] == ["NewBestTrial"]
    b, o = observed(trials, status={"bestTrial": {"number": 1}})
    sp.record_best(b, o)
    assert b.plan.events == []


def test_record_best_follows_the_direction():
    trials = [trial(0, tr.T_COMPLETE, 0.7), trial(1, tr.T_COMPLETE, 0.8)]
    b, o = observed(trials, s=spec(**STEPS, objective={"metric": "val_loss", "direction": "minimize"}))
    assert sp.record_best(b, o).trial.number == 0


# --------------------------------------------------------------------------- failure budget


def test_failure_budget_passes_while_failures_are_within_it():
    b, o = observed([trial(0, tr.T_FAIL), trial(1)])
    assert sp.plan_failure_budget(b, o, None) is None and b.plan.tells == []


def test_failure_budget_exceeded_fails_the_study_and_its_running_trials():
    b, o = observed([trial(0, tr.T_FAIL), trial(1, tr.T_FAIL), trial(2)], [job(2)])
    plan = sp.plan_failure_budget(b, o, None)
    assert plan.status["phase"] == sp.FAILED
    assert [(t.number, t.state) for t in plan.tells] == [(2, tr.T_FAIL)]
    assert plan.delete_jobs == ["s-t2"] and plan.finalize.run_status == "FAILED"
    assert plan.status["trials"] == {"running": 0, "completed": 0, "pruned": 0, "failed": 3}


# --------------------------------------------------------------------------- schedule


def test_schedule_fills_the_free_slots_within_the_budget():
    b, o = observed(
        [trial(0, tr.T_COMPLETE, 0.5), trial(1), trial(2, tr.T_COMPLETE, 0.6)], [job(1, phase="Running")]
    )
    sched = sp.schedule(b, o, [])
    assert b.plan.ask == 1 and b.plan.create_trials == [] and sched.running == 2
    assert b.status["trialsDone"] == "2/4"


def test_schedule_creates_the_missing_job_of_an_asked_trial():
    b, o = observed([trial(0)])
    sp.schedule(b, o, [])
    assert b.plan.create_trials == [0] and b.plan.ask == 1


def test_schedule_asks_nothing_while_blocked_or_waiting_for_a_foreign_job():
    b, o = observed([trial(0)], blocked="MLflow is down")
    sched = sp.schedule(b, o, [])
    assert b.plan.create_trials == [] and b.plan.ask == 0 and sched.running == 1
    b, o = observed([trial(0)], [job(0, owner="another-study")])
    sched = sp.schedule(b, o, [])
    assert b.plan.ask == 0 and sched.waiting_on_foreign == ["s-t0"]


# --------------------------------------------------------------------------- message


def test_plan_outcome_succeeds_when_every_trial_finished():
    trials = [trial(n, tr.T_COMPLETE, 0.5 + n / 10, **{"dmlt.model_uri": f"models:/m-{n}"}) for n in range(4)]
    b, o = observed(trials)
    best = sp.record_best(b, o)
    plan = sp.plan_outcome(b, o, best, sp.Schedule(0, []))
    assert plan.status["phase"] == sp.SUCCEEDED
    assert plan.status["message"] == (
        "All 4 trials finished (4 completed, 0 pruned, 0 failed); best val_auc=0.8 (trial 3)"
    )
    assert plan.finalize.run_status == "FINISHED"
    assert (plan.finalize.register.trial, plan.finalize.register.source) == (3, "models:/m-3")


def test_plan_outcome_says_what_is_awaited():
    b, o = observed([], blocked="MLflow is down")
    plan = sp.plan_outcome(b, o, None, sp.Schedule(0, ["s-t0"]))
    assert plan.status["phase"] == sp.PENDING
    assert plan.status["message"] == (
        "MLflow is down; Waiting for TrainingJob(s) s-t0 of an earlier study or trial with the same "
        "name to go; 0/4 trials finished (0 completed, 0 pruned, 0 failed), 0 running"
    )
    b, o = observed([trial(0)])
    running = sp.plan_outcome(b, o, None, sp.Schedule(1, []))
    assert running.status["phase"] == sp.RUNNING and "startTime" in running.status
