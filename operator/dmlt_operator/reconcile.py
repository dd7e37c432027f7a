"""The reconciler's decisions, as a pure function of what is observed.

`plan()` takes a TrainingJob's spec, its last status, the Pods the kopf index holds for it, the
trainer reports read from logs, and the time; it returns the status the job should have and
the few actions that get there (create these ranks, delete these Pods, delete the job). It is
level-triggered: it never asks what happened, only what is, so running it twice, late, or after
an operator restart gives the same answer.

The gang: every Pod of a job carries the job's `attempt` label. A rank failing (its Pod Failed,
or deleted while the job runs) bumps `attempt` (and `restarts`), which makes every current Pod
"old"; old Pods are deleted, and only when all are gone is the new attempt created under the
same names, from rank 0's checkpoint. Suspend bumps `attempt` too (without counting a restart),
so resuming is the same path. Ranks are never replaced one at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from dmlt_operator import status as st
from dmlt_operator.resources import JobRef, pod_name
from dmlt_operator.spec import TrainingJobSpec

PENDING = "Pending"
RUNNING = "Running"
RESTARTING = "Restarting"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
SUSPENDED = "Suspended"
PHASES = (PENDING, RUNNING, RESTARTING, SUCCEEDED, FAILED, SUSPENDED)
TERMINAL = (SUCCEEDED, FAILED)

# Condition types (metav1.Condition form).
COND_CREATED = "Created"
COND_RUNNING = "Running"
COND_RESTARTING = "Restarting"
COND_SUSPENDED = "Suspended"
COND_SUCCEEDED = "Succeeded"
COND_FAILED = "Failed"

RESULT_REASONS = {"completed": "Completed", "early_stopped": "EarlyStopped", "pruned": "Pruned"}


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    """Normal or Warning."""
    reason: str
    message: str


@dataclass(slots=True)
class Plan:
    status: dict[str, Any]
    create_ranks: list[int] = field(default_factory=list)
    ensure_service: bool = False
    delete_pods: list[str] = field(default_factory=list)
    delete_job: bool = False
    events: list[Event] = field(default_factory=list)


def logs_to_read(status: Mapping[str, Any] | None, pods: Sequence[st.PodSummary], uid: str) -> list[str]:
    """Pods whose log tail is worth reading now: rank 0 while it runs, and each rank once when
    it has succeeded (its `finished` line: result and weight hash)."""
    status = status or {}
    if status.get("phase") in TERMINAL:
        return []
    attempt = int(status.get("attempt") or 0)
    known = {
        r.get("rank"): r
        for r in status.get("ranks") or []
        if isinstance(r, Mapping) and r.get("attempt") == attempt
    }
    names = []
    for pod in pods:
        if pod.owner_uid != uid or pod.attempt != attempt:
            continue
        if pod.rank == 0 and pod.state == st.RUNNING:
            names.append(pod.name)
        elif pod.state == st.SUCCEEDED and not (known.get(pod.rank) or {}).get("result"):
            names.append(pod.name)
    return sorted(names)


def _pods_to_clean(pods: Sequence[st.PodSummary], policy: str) -> list[str]:
    if policy == "None":
        return []
    if policy == "All":
        return sorted(p.name for p in pods if not p.deleting)
    return sorted(p.name for p in pods if not p.deleting and p.state in (st.PENDING, st.RUNNING))


class _Builder:
    """Accumulates the new status and actions while the decision is made."""

    def __init__(self, job: JobRef, old: Mapping[str, Any], now: datetime) -> None:
        self.job = job
        self.now = now
        self.old = old
        self.status: dict[str, Any] = {
            k: v for k, v in old.items() if k in st.MANAGED_STATUS_KEYS and v is not None
        }
        self.status["observedGeneration"] = job.generation
        self.conditions: list[dict[str, Any]] = [dict(c) for c in old.get("conditions") or []]
        self.plan = Plan(status=self.status)

    def cond(self, type_: str, value: bool, reason: str, message: str) -> None:
        self.conditions = st.set_condition(
            self.conditions, type_, value, reason, message, self.now, self.job.generation
        )

    def clear(self, type_: str, reason: str, message: str) -> None:
        self.conditions = st.clear_condition(
            self.conditions, type_, reason, message, self.now, self.job.generation
        )

    def event(self, type_: str, reason: str, message: str) -> None:
        self.plan.events.append(Event(type_, reason, message))

    def finish(self, phase: str, message: str) -> Plan:
        old_phase = self.old.get("phase")
        self.status["phase"] = phase
        self.status["message"] = message[:1024]
        self.status["conditions"] = self.conditions
        if phase != old_phase and phase not in (FAILED, SUCCEEDED, RESTARTING, SUSPENDED):
            # Terminal, restart and suspend transitions post their own, more specific events.
            self.event("Normal", phase, message)
        return self.plan


def _rank_entries(
    job: str,
    spec: TrainingJobSpec,
    attempt: int,
    current: Mapping[int, st.PodSummary],
    old_ranks: Mapping[int, Mapping[str, Any]],
    reports: Mapping[str, st.TrainerReport],
) -> list[dict[str, Any]]:
    entries = []
    for rank in range(spec.replicas):
        pod = current.get(rank)
        prev = old_ranks.get(rank) or {}
        name = pod_name(job, rank)
        entry: dict[str, Any] = {"rank": rank, "pod": name, "attempt": attempt}
        if pod is None:
            # A rank that already succeeded stays Succeeded even if its Pod is cleaned up.
            entry["state"] = st.SUCCEEDED if prev.get("state") == st.SUCCEEDED else st.ABSENT
        else:
            entry["state"] = pod.state
            entry["ready"] = pod.ready
            if pod.node:
                entry["node"] = pod.node
            if pod.exit_code is not None:
                entry["exitCode"] = pod.exit_code
            if pod.reason:
                entry["reason"] = pod.reason
            if pod.message and pod.state in (st.FAILED, st.PENDING):
                entry["message"] = pod.message
        result = prev.get("result")
        report = reports.get(entry["pod"]) if pod is not None else None
        if report is not None and report.finished:
            result = report.finished
        if result:
            entry["result"] = dict(result)
        entries.append(entry)
    return entries


def plan(
    job: JobRef,
    spec: TrainingJobSpec,
    status: Mapping[str, Any] | None,
    pods: Sequence[st.PodSummary],
    reports: Mapping[str, st.TrainerReport],
    now: datetime,
) -> Plan:
    """Decide the job's next status and actions from what is observed now."""
    old = dict(status or {})
    b = _Builder(job, old, now)
    s = b.status
    old_phase = old.get("phase")
    replicas = spec.replicas
    policy = spec.run_policy

    own = [p for p in pods if p.owner_uid == job.uid]
    foreign = {p.name for p in pods if p.owner_uid != job.uid}
    attempt = max([int(old.get("attempt") or 0)] + [p.attempt for p in own])
    restarts = int(old.get("restarts") or 0)
    s["attempt"], s["restarts"] = attempt, restarts

    if not old_phase:
        b.cond(COND_CREATED, True, "JobCreated", f"TrainingJob with {replicas} rank(s) created")

    _apply_reports(s, job, reports)

    current = {p.rank: p for p in own if p.attempt == attempt and p.rank < replicas}
    old_ranks = {
        r["rank"]: r
        for r in old.get("ranks") or []
        if isinstance(r, Mapping) and isinstance(r.get("rank"), int) and r.get("attempt") == attempt
    }
    s["ranks"] = _rank_entries(job.name, spec, attempt, current, old_ranks, reports)
    s["ready"] = f"{sum(1 for p in current.values() if p.ready)}/{replicas}"

    # ---- finished jobs: clean up per policy, expire after the TTL, decide nothing else.
    if old_phase in TERMINAL:
        # The record of how each rank ended stays as it was, even when its Pod is cleaned up.
        for key in ("ranks", "ready"):
            if key in old:
                s[key] = old[key]
        b.plan.delete_pods = _pods_to_clean(own, policy.clean_pod_policy)
        ttl = policy.ttl_seconds_after_finished
        done = st.parse_time(old.get("completionTime"))
        if ttl is not None and done is not None and now >= done + timedelta(seconds=ttl):
            b.plan.delete_job = True
            b.event("Normal", "TTLExpired", f"Deleting the job {ttl}s after it finished")
        return b.finish(old_phase, old.get("message") or old_phase)

    # ---- suspend: delete the gang (a new attempt starts on resume), stop the deadline clock.
    if policy.suspend:
        if old_phase != SUSPENDED:
            attempt += 1
            s["attempt"] = attempt
            b.event("Normal", "Suspended", "Job suspended: deleting its Pods")
            b.cond(COND_SUSPENDED, True, "JobSuspended", "spec.runPolicy.suspend is true")
            b.clear(COND_RUNNING, "JobSuspended", "Job is suspended")
            b.clear(COND_RESTARTING, "JobSuspended", "Job is suspended")
        s.pop("startTime", None)
        s["ranks"] = _rank_entries(job.name, spec, attempt, {}, {}, {})
        s["ready"] = f"0/{replicas}"
        b.plan.delete_pods = sorted(p.name for p in own if not p.deleting)
        return b.finish(SUSPENDED, "Job is suspended")
    if old_phase == SUSPENDED:
        b.event("Normal", "Resumed", "Job resumed: recreating its Pods from the last checkpoint")
        b.cond(COND_SUSPENDED, False, "JobResumed", "spec.runPolicy.suspend is false")
        s.pop("startTime", None)

    start = st.parse_time(s.get("startTime"))
    if start is None:
        start = now
        s["startTime"] = st.format_time(now)

    # ---- deadline.
    deadline = policy.active_deadline_seconds
    if deadline is not None and now - start > timedelta(seconds=deadline):
        return _fail(
            b, own, policy.clean_pod_policy, "DeadlineExceeded",
            f"Job was active longer than activeDeadlineSeconds ({deadline}s)",
        )  # fmt: skip

    # ---- failures of the current attempt.
    failures = []
    for rank in range(replicas):
        pod = current.get(rank)
        prev = old_ranks.get(rank) or {}
        if pod is None:
            if prev.get("state") in (st.PENDING, st.RUNNING, st.TERMINATING):
                failures.append(f"rank {rank} (pod {prev.get('pod')}) was deleted before it finished")
        elif pod.state == st.FAILED:
            failures.append(st.describe_failure(pod))
        elif pod.state == st.TERMINATING:
            failures.append(st.describe_failure(pod))
    if failures:
        detail = "; ".join(failures)
        if restarts >= policy.backoff_limit:
            return _fail(
                b, own, policy.clean_pod_policy, "BackoffLimitExceeded",
                f"{detail}; backoffLimit ({policy.backoff_limit}) reached after {restarts} "
                "gang restart(s)",
            )  # fmt: skip
        restarts += 1
        attempt += 1
        s["attempt"], s["restarts"] = attempt, restarts
        s["ranks"] = _rank_entries(job.name, spec, attempt, {}, {}, {})
        s["ready"] = f"0/{replicas}"
        message = (
            f"{detail}; restarting all {replicas} rank(s) "
            f"(restart {restarts} of at most {policy.backoff_limit})"
        )
        b.event("Warning", "GangRestart", message)
        b.cond(COND_RESTARTING, True, "RankFailed", message)
        b.clear(COND_RUNNING, "RankFailed", detail)
        b.plan.delete_pods = sorted(p.name for p in own if not p.deleting)
        return b.finish(RESTARTING, message)

    # ---- the previous attempt must be gone before its names are reused.
    leftovers = [p for p in own if p.attempt < attempt]
    b.plan.delete_pods = sorted(p.name for p in leftovers if not p.deleting)
    waiting_phase = RESTARTING if old_phase == RESTARTING else PENDING
    if leftovers:
        return b.finish(waiting_phase, f"Waiting for {len(leftovers)} Pod(s) of the previous attempt to go")

    missing = [r for r in range(replicas) if r not in current and r not in _succeeded(old_ranks)]
    blocked = [r for r in missing if pod_name(job.name, r) in foreign]
    b.plan.create_ranks = [r for r in missing if r not in blocked]
    b.plan.ensure_service = bool(b.plan.create_ranks) or not old_phase

    states = [e["state"] for e in s["ranks"]]
    if all(state == st.SUCCEEDED for state in states):
        return _succeed(b, own, policy.clean_pod_policy, reports)
    if all(state in (st.RUNNING, st.SUCCEEDED) for state in states):
        if old_phase != RUNNING:
            b.cond(COND_RUNNING, True, "AllRanksRunning", f"All {replicas} rank(s) are running")
            b.clear(COND_RESTARTING, "AllRanksRunning", "The new gang is running")
        return b.finish(RUNNING, f"All {replicas} rank(s) are running")

    if blocked:
        return b.finish(
            waiting_phase,
            f"Waiting for Pod(s) {', '.join(pod_name(job.name, r) for r in blocked)} "
            "of a previous job with the same name to go",
        )
    stuck = [
        f"rank {p.rank}: {p.reason}" + (f" ({p.message})" if p.message else "")
        for p in current.values()
        if p.state == st.PENDING and p.reason
    ]
    pending = sum(1 for state in states if state in (st.PENDING, st.ABSENT))
    message = f"{pending} of {replicas} rank(s) not running yet"
    if stuck:
        message += ": " + "; ".join(stuck)
    return b.finish(RUNNING if old_phase == RUNNING else waiting_phase, message)


def _succeeded(old_ranks: Mapping[int, Mapping[str, Any]]) -> set[int]:
    return {r for r, e in old_ranks.items() if e.get("state") == st.SUCCEEDED}


def _apply_reports(s: dict[str, Any], job: JobRef, reports: Mapping[str, st.TrainerReport]) -> None:
    rank0 = reports.get(pod_name(job.name, 0))
    if rank0 is None:
        return
    progress = st.progress_of(rank0)
    if progress is not None:
        s["progress"] = progress
    if rank0.metrics:
        s["metrics"] = dict(rank0.metrics)
    if rank0.mlflow_run_id:
        s["mlflowRunId"] = rank0.mlflow_run_id
    if rank0.finished:
        s["result"] = rank0.finished["status"]


def _fail(b: _Builder, own: Sequence[st.PodSummary], clean_policy: str, reason: str, message: str) -> Plan:
    b.status["completionTime"] = st.format_time(b.now)
    b.cond(COND_FAILED, True, reason, message)
    b.clear(COND_RUNNING, reason, message)
    b.clear(COND_RESTARTING, reason, message)
    b.event("Warning", reason, message)
    b.plan.delete_pods = _pods_to_clean(own, clean_policy)
    return b.finish(FAILED, message)


def _succeed(
    b: _Builder,
    own: Sequence[st.PodSummary],
    clean_policy: str,
    reports: Mapping[str, st.TrainerReport],
) -> Plan:
    result = b.status.get("result") or "completed"
    reason = RESULT_REASONS.get(result, "Completed")
    replicas = len(b.status["ranks"])
    message = f"All {replicas} rank(s) finished ({result})"
    hashes = {e.get("result", {}).get("weightsSha256") for e in b.status["ranks"]}
    hashes.discard(None)
    if len(hashes) > 1:
        message += "; WARNING: ranks reported different weight hashes"
    b.status["completionTime"] = st.format_time(b.now)
    b.cond(COND_SUCCEEDED, True, reason, message)
    b.clear(COND_RUNNING, reason, message)
    b.clear(COND_RESTARTING, reason, message)
    b.event("Normal", "Succeeded", message)
    b.plan.delete_pods = _pods_to_clean(own, clean_policy)
    return b.finish(SUCCEEDED, message)
