"""The reconciler's decisions, as a pure function of what is observed.

`plan()` takes a TrainingJob's spec, its last status, the Pods the kopf index holds for it (with
each rank's result from its termination message), the trainer reports read from logs where no
progress receiver is configured, and the time; it returns the status the job should have and
the few actions that get there (create these ranks, delete these Pods, delete the job). It is
level-triggered: it never asks what happened, only what is, so running it twice, late, or after
an operator restart gives the same answer.

The gang: every Pod of a job carries the job's `attempt` label. A rank failing (its Pod Failed,
or deleted while the job runs) bumps `attempt` (and `restarts`), which makes every current Pod
"old"; old Pods are deleted, and only when all are gone is the new attempt created under the
same names, from rank 0's checkpoint. Suspend bumps `attempt` too (without counting a restart),
so resuming is the same path. Ranks are never replaced one at a time.

The decision is four named steps, tried in order until one finishes the plan: a finished job
(`plan_finished`), a suspended one (`plan_suspended`), failures and the gang restart
(`plan_failures`), and otherwise the gang's progress with its waiting message (`plan_progress`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from dmlt_operator.core.conditions import (
    COND_CREATED,
    COND_FAILED,
    COND_RUNNING,
    COND_SUCCEEDED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    ManagedStatus,
    format_time,
    parse_time,
)
from dmlt_operator.core.plan import Event, StatusBuilder
from dmlt_operator.trainingjob import admission as ad
from dmlt_operator.trainingjob import pods as pd
from dmlt_operator.trainingjob import queueing as qu
from dmlt_operator.trainingjob.build import JobRef, pod_name
from dmlt_operator.trainingjob.progress import TrainerReport, progress_of
from dmlt_operator.trainingjob.spec import TrainingJobSpec

RESTARTING = "Restarting"
SUSPENDED = "Suspended"
PHASES = (PENDING, RUNNING, RESTARTING, SUCCEEDED, FAILED, SUSPENDED)

COND_RESTARTING = "Restarting"
COND_SUSPENDED = "Suspended"
COND_QUEUE_IGNORED = "QueueIgnored"
"""True while the job runs on without the queue it was given after it started."""
REASON_EVICTED = "EvictedByKueue"
"""The Suspended condition's reason when Kueue took the quota back (not runPolicy.suspend)."""

RESULT_REASONS = {"completed": "Completed", "early_stopped": "EarlyStopped", "pruned": "Pruned"}

MANAGED_STATUS = ManagedStatus(
    frozenset(
        {
            "phase",
            "attempt",
            "restarts",
            "startTime",
            "completionTime",
            "observedGeneration",
            "ready",
            "ranks",
            "progress",
            "metrics",
            "mlflowRunId",
            "result",
            "conditions",
            "message",
            "queue",
        }
    )
)
MANAGED_STATUS_KEYS = MANAGED_STATUS.keys
status_delta = MANAGED_STATUS.delta


@dataclass(slots=True)
class Plan:
    status: dict[str, Any]
    create_ranks: list[int] = field(default_factory=list)
    ensure_service: bool = False
    delete_pods: list[str] = field(default_factory=list)
    delete_job: bool = False
    events: list[Event] = field(default_factory=list)
    create_workload: dict[str, Any] | None = None
    """The Kueue Workload to create for a queued job (queueing.build_workload)."""
    delete_workload: tuple[str, str | None] | None = None
    """(name, uid) of a Workload to delete first: outdated, or of a job that left its queue."""
    workload_status: dict[str, Any] | None = None
    """A merge patch of the Workload's /status (release the quota, or Finished)."""
    workload_patch: dict[str, Any] | None = None
    """A merge patch of the Workload itself (spec.active, for runPolicy.suspend)."""
    placement: ad.Placement | None = None
    """What Kueue's admission adds to every rank Pod created (admission.apply_placement)."""


@dataclass(frozen=True, slots=True)
class QueueInput:
    """What one tick sees of a queued job's Kueue side (None in plan(): not queued)."""

    name: str | None
    """The LocalQueue the job names; None: it names none any more, but still has `workload`."""
    workload: Mapping[str, Any] | None = None
    """The job's Workload as read (None: not created yet, or not seen yet)."""
    flavors: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """The ResourceFlavors its admission names, by name."""
    priority: qu.Priority | None = None
    """The resolved priority class (for a Workload to create)."""
    preemptor: str | None = None
    """namespace/name of the Workload that preempted it, when resolved."""
    position: ad.QueuePosition | None = None
    """Its place in the LocalQueue (Kueue's visibility API) while it waits; None: not known."""
    position_tracked: bool = False
    """The visibility API answers: look again at a waiting job now and then, as the jobs ahead
    of it are admitted (no event of its own Workload says so)."""

    @property
    def view(self) -> ad.WorkloadView | None:
        return ad.parse_workload(self.workload) if self.workload is not None else None


class JobBuilder(StatusBuilder[Plan]):
    """The job's status builder: a new phase is announced by an Event of its own name."""

    ref: JobRef

    def finish(self, phase: str, message: str) -> Plan:
        if phase != self.old_phase and phase not in (FAILED, SUCCEEDED, RESTARTING, SUSPENDED):
            # Terminal, restart and suspend transitions post their own, more specific events.
            self.event("Normal", phase, message)
        return super().finish(phase, message)


@dataclass(frozen=True, slots=True)
class Observed:
    """What one tick sees of a job, derived once for every step."""

    job: JobRef
    spec: TrainingJobSpec
    own: list[pd.PodSummary]
    """The job's Pods (of any attempt)."""
    foreign: set[str]
    """Names of Pods that hold one of the job's Pod names but belong to another object."""
    current: dict[int, pd.PodSummary]
    """The current attempt's Pods by rank."""
    old_ranks: dict[int, Mapping[str, Any]]
    """status.ranks entries of the current attempt, by rank."""
    reports: Mapping[str, TrainerReport]


def logs_to_read(
    status: Mapping[str, Any] | None, pods: Sequence[pd.PodSummary], uid: str, enabled: bool = True
) -> list[str]:
    """The fallback progress channel (no receiver configured: `enabled`): Pods whose log tail
    is worth reading now. Rank 0 while it runs, and a succeeded rank whose termination message
    held no result (a trainer image from before termination messages), once."""
    status = status or {}
    if not enabled or status.get("phase") in TERMINAL:
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
        if pod.rank == 0 and pod.state == pd.RUNNING:
            names.append(pod.name)
        elif pod.state == pd.SUCCEEDED and not pod.result and not (known.get(pod.rank) or {}).get("result"):
            names.append(pod.name)
    return sorted(names)


def _pods_to_clean(pods: Sequence[pd.PodSummary], policy: str) -> list[str]:
    if policy == "None":
        return []
    if policy == "All":
        return sorted(p.name for p in pods if not p.deleting)
    return sorted(p.name for p in pods if not p.deleting and p.state in (pd.PENDING, pd.RUNNING))


def _rank_entries(
    job: str,
    spec: TrainingJobSpec,
    attempt: int,
    current: Mapping[int, pd.PodSummary],
    old_ranks: Mapping[int, Mapping[str, Any]],
    reports: Mapping[str, TrainerReport],
) -> list[dict[str, Any]]:
    entries = []
    for rank in range(spec.replicas):
        pod = current.get(rank)
        prev = old_ranks.get(rank) or {}
        name = pod_name(job, rank)
        entry: dict[str, Any] = {"rank": rank, "pod": name, "attempt": attempt}
        if pod is None:
            # A rank that already succeeded stays Succeeded even if its Pod is cleaned up.
            entry["state"] = pd.SUCCEEDED if prev.get("state") == pd.SUCCEEDED else pd.ABSENT
        else:
            entry["state"] = pod.state
            entry["ready"] = pod.ready
            if pod.node:
                entry["node"] = pod.node
            if pod.exit_code is not None:
                entry["exitCode"] = pod.exit_code
            if pod.reason:
                entry["reason"] = pod.reason
            if pod.message and pod.state in (pd.FAILED, pd.PENDING):
                entry["message"] = pod.message
        result = _rank_result(pod, prev, reports)
        if result:
            entry["result"] = dict(result)
        entries.append(entry)
    return entries


def _rank_result(
    pod: pd.PodSummary | None, prev: Mapping[str, Any], reports: Mapping[str, TrainerReport]
) -> Mapping[str, Any] | None:
    """A rank's result: its Pod's termination message, else its log (the fallback), else what
    status already holds."""
    if pod is not None and pod.result:
        return pod.result
    report = reports.get(pod.name) if pod is not None else None
    if report is not None and report.finished:
        return report.finished
    return prev.get("result")


def _ranks_reset(b: JobBuilder, o: Observed, attempt: int) -> None:
    """A new attempt starts with every rank absent."""
    b.status["ranks"] = _rank_entries(o.job.name, o.spec, attempt, {}, {}, {})
    b.status["ready"] = f"0/{o.spec.replicas}"


def observe(
    b: JobBuilder, spec: TrainingJobSpec, pods: Sequence[pd.PodSummary], reports: Mapping[str, TrainerReport]
) -> Observed:
    """What is known for sure (attempt, ranks, progress) goes into the builder's status; the
    rest is returned for the steps to decide on."""
    job, old, s = b.ref, b.old, b.status
    own = [p for p in pods if p.owner_uid == job.uid]
    attempt = max([int(old.get("attempt") or 0)] + [p.attempt for p in own])
    s["attempt"], s["restarts"] = attempt, int(old.get("restarts") or 0)
    if not b.old_phase:
        b.cond(COND_CREATED, True, "JobCreated", f"TrainingJob with {spec.replicas} rank(s) created")
    _apply_reports(s, job, reports)
    current = {p.rank: p for p in own if p.attempt == attempt and p.rank < spec.replicas}
    old_ranks = {
        r["rank"]: r
        for r in old.get("ranks") or []
        if isinstance(r, Mapping) and isinstance(r.get("rank"), int) and r.get("attempt") == attempt
    }
    s["ranks"] = _rank_entries(job.name, spec, attempt, current, old_ranks, reports)
    _apply_rank0_result(s)
    s["ready"] = f"{sum(1 for p in current.values() if p.ready)}/{spec.replicas}"
    foreign = {p.name for p in pods if p.owner_uid != job.uid}
    return Observed(b.ref, spec, own, foreign, current, old_ranks, reports)


def plan_finished(b: JobBuilder, o: Observed) -> Plan | None:
    """A finished job: clean up per policy, expire after the TTL, decide nothing else."""
    old, old_phase = b.old, b.old_phase
    if old_phase not in TERMINAL:
        return None
    # The record of how each rank ended stays as it was, even when its Pod is cleaned up.
    for key in ("ranks", "ready"):
        if key in old:
            b.status[key] = old[key]
    policy = o.spec.run_policy
    b.plan.delete_pods = _pods_to_clean(o.own, policy.clean_pod_policy)
    ttl = policy.ttl_seconds_after_finished
    done = parse_time(old.get("completionTime"))
    if ttl is not None and done is not None and b.now >= done + timedelta(seconds=ttl):
        b.plan.delete_job = True
        b.event("Normal", "TTLExpired", f"Deleting the job {ttl}s after it finished")
    return b.finish(old_phase, old.get("message") or old_phase)


def plan_suspended(b: JobBuilder, o: Observed) -> Plan | None:
    """Suspend deletes the gang (a new attempt starts on resume) and stops the deadline clock;
    on resume, the clock starts again."""
    s = b.status
    if o.spec.run_policy.suspend:
        if b.old_phase != SUSPENDED:
            s["attempt"] += 1
            b.event("Normal", "Suspended", "Job suspended: deleting its Pods")
            b.cond(COND_SUSPENDED, True, "JobSuspended", "spec.runPolicy.suspend is true")
            b.clear(COND_RUNNING, "JobSuspended", "Job is suspended")
            b.clear(COND_RESTARTING, "JobSuspended", "Job is suspended")
        s.pop("startTime", None)
        _ranks_reset(b, o, s["attempt"])
        b.plan.delete_pods = sorted(p.name for p in o.own if not p.deleting)
        return b.finish(SUSPENDED, "Job is suspended")
    if b.old_phase == SUSPENDED and not evicted_by_kueue(b):
        b.event("Normal", "Resumed", "Job resumed: recreating its Pods from the last checkpoint")
        b.cond(COND_SUSPENDED, False, "JobResumed", "spec.runPolicy.suspend is false")
        s.pop("startTime", None)
    return None


def rank_failures(o: Observed) -> list[str]:
    """One line per rank of the current attempt that failed or vanished before it finished."""
    failures = []
    for rank in range(o.spec.replicas):
        pod = o.current.get(rank)
        prev = o.old_ranks.get(rank) or {}
        if pod is None:
            if prev.get("state") in (pd.PENDING, pd.RUNNING, pd.TERMINATING):
                failures.append(f"rank {rank} (pod {prev.get('pod')}) was deleted before it finished")
        elif pod.state in (pd.FAILED, pd.TERMINATING):
            failures.append(pd.describe_failure(pod))
    return failures


def gang_created(o: Observed, attempt: int) -> datetime | None:
    """When the first Pod of this attempt was created, if one exists: the start of a job whose
    first status write was held (trainingjob/handlers.py first_pending)."""
    times = [parse_time(p.created) for p in o.own if p.attempt == attempt and not p.deleting]
    return min((t for t in times if t is not None), default=None)


def plan_failures(b: JobBuilder, o: Observed) -> Plan | None:
    """Past the deadline, or a rank failed: fail the job, or restart the whole gang."""
    s, policy = b.status, o.spec.run_policy
    start = parse_time(s.get("startTime"))
    if start is None:
        start = gang_created(o, s["attempt"]) or b.now
        s["startTime"] = format_time(start)
    deadline = policy.active_deadline_seconds
    if deadline is not None and b.now - start > timedelta(seconds=deadline):
        return _fail(
            b, o, "DeadlineExceeded", f"Job was active longer than activeDeadlineSeconds ({deadline}s)"
        )
    failures = rank_failures(o)
    if not failures:
        return None
    detail = "; ".join(failures)
    restarts = s["restarts"]
    if restarts >= policy.backoff_limit:
        return _fail(
            b, o, "BackoffLimitExceeded",
            f"{detail}; backoffLimit ({policy.backoff_limit}) reached after {restarts} gang restart(s)",
        )  # fmt: skip
    s["restarts"] += 1
    s["attempt"] += 1
    _ranks_reset(b, o, s["attempt"])
    message = (
        f"{detail}; restarting all {o.spec.replicas} rank(s) "
        f"(restart {s['restarts']} of at most {policy.backoff_limit})"
    )
    b.event("Warning", "GangRestart", message)
    b.cond(COND_RESTARTING, True, "RankFailed", message)
    b.clear(COND_RUNNING, "RankFailed", detail)
    b.plan.delete_pods = sorted(p.name for p in o.own if not p.deleting)
    return b.finish(RESTARTING, message)


def waiting_message(o: Observed, states: Sequence[str]) -> str:
    """Why not every rank runs yet, with the reasons of ranks stuck in Pending."""
    stuck = [
        f"rank {p.rank}: {p.reason}" + (f" ({p.message})" if p.message else "")
        for p in o.current.values()
        if p.state == pd.PENDING and p.reason
    ]
    pending = sum(1 for state in states if state in (pd.PENDING, pd.ABSENT))
    message = f"{pending} of {o.spec.replicas} rank(s) not running yet"
    if stuck:
        message += ": " + "; ".join(stuck)
    return message


def plan_progress(b: JobBuilder, o: Observed) -> Plan:
    """The gang's next move: wait for the previous attempt to go, create the missing ranks,
    and report succeeded, running or what is awaited."""
    old_phase, replicas, name = b.old_phase, o.spec.replicas, o.job.name
    # The previous attempt must be gone before its names are reused.
    leftovers = [p for p in o.own if p.attempt < b.status["attempt"]]
    b.plan.delete_pods = sorted(p.name for p in leftovers if not p.deleting)
    waiting_phase = RESTARTING if old_phase == RESTARTING else PENDING
    if leftovers:
        return b.finish(waiting_phase, f"Waiting for {len(leftovers)} Pod(s) of the previous attempt to go")

    succeeded = {r for r, e in o.old_ranks.items() if e.get("state") == pd.SUCCEEDED}
    missing = [r for r in range(replicas) if r not in o.current and r not in succeeded]
    blocked = [r for r in missing if pod_name(name, r) in o.foreign]
    b.plan.create_ranks = [r for r in missing if r not in blocked]
    # A job without a phase whose Pods exist had its Service made before them (its first status
    # write may be held: trainingjob/handlers.py first_pending).
    b.plan.ensure_service = bool(b.plan.create_ranks) or not (old_phase or o.own)

    states = [e["state"] for e in b.status["ranks"]]
    if all(state == pd.SUCCEEDED for state in states):
        return _succeed(b, o)
    if all(state in (pd.RUNNING, pd.SUCCEEDED) for state in states):
        if old_phase != RUNNING:
            b.cond(COND_RUNNING, True, "AllRanksRunning", f"All {replicas} rank(s) are running")
            b.clear(COND_RESTARTING, "AllRanksRunning", "The new gang is running")
        return b.finish(RUNNING, f"All {replicas} rank(s) are running")
    if blocked:
        return b.finish(
            waiting_phase,
            f"Waiting for Pod(s) {', '.join(pod_name(name, r) for r in blocked)} "
            "of a previous job with the same name to go",
        )
    return b.finish(RUNNING if old_phase == RUNNING else waiting_phase, waiting_message(o, states))


def evicted_by_kueue(b: JobBuilder) -> bool:
    """Is the job suspended because Kueue evicted it (not by runPolicy.suspend)?"""
    if b.old_phase != SUSPENDED:
        return False
    cond = next((c for c in b.old.get("conditions") or [] if c.get("type") == COND_SUSPENDED), {})
    return cond.get("status") == "True" and cond.get("reason") == REASON_EVICTED


def plan_queue(b: JobBuilder, o: Observed, q: QueueInput) -> Plan | None:
    """A queued job's admission (admission.next_step): no Pods until Kueue admits the whole
    gang; stop the gang when Kueue evicts it; fall through (None) once admitted."""
    view, name = q.view, q.name or ""
    if view is not None and not (view.quota_reserved or view.finished or o.own):
        if q.workload is not None and qu.workload_outdated(q.workload, o.spec, name):
            return _replace_workload(b, o, q, name)
    step = ad.next_step(view, bool(o.own))
    b.status["queue"] = ad.queue_status(view, name, q.position)
    if step is ad.Step.CREATE_WORKLOAD:
        b.plan.create_workload = qu.build_workload(o.job, o.spec, name, q.priority)
        b.event("Normal", "Queued", f"Waiting for admission in LocalQueue {name}")
        return _queued(b, b.status["queue"]["message"])
    if step is ad.Step.SUSPEND:
        return _kueue_suspend(b, o, view, q.preemptor)
    if step in (ad.Step.WAIT, ad.Step.RELEASE):
        return _queued(b, b.status["queue"].get("message") or "Waiting for Kueue")
    if step is ad.Step.RUN and view is not None:
        return _admitted(b, o, view, q)
    return None


def _replace_workload(b: JobBuilder, o: Observed, q: QueueInput, name: str) -> Plan:
    """The job's queue or gang changed while its Workload holds no quota (Kueue refuses podSet
    changes once it reserves some): delete that Workload (by uid) and create the new one."""
    meta = (q.workload or {}).get("metadata") or {}
    b.plan.delete_workload = (str(meta.get("name") or qu.workload_name(o.job)), meta.get("uid"))
    b.plan.create_workload = qu.build_workload(o.job, o.spec, name, q.priority)
    message = f"replacing its Workload in LocalQueue {name}: the job's queue or gang changed"
    if (b.old.get("queue") or {}).get("message") != message:
        b.event("Normal", "Requeued", f"Replacing Workload {meta.get('name')}: {message.split(': ')[1]}")
    b.status["queue"] = {"name": name, "state": "Pending", "message": message}
    return _queued(b, message)


def queue_in_force(b: JobBuilder, o: Observed, q: QueueInput | None) -> QueueInput | None:
    """The queue this tick plans with (None: plan as a job without a queue). A change of the
    job's queue takes effect only while the job does not run, as Kueue lets a Job's queue-name
    change only while the Job is suspended:

    - a job that started without a queue and names one now runs on without it (condition
      QueueIgnored, a Warning Event); it is queued when it starts again after a suspension;
    - a job that runs on an admitted Workload follows that Workload until it stops, whatever
      it names now;
    - a job that names no queue any more and does not run leaves the queue: its Workload goes
      (and its quota with it), a suspension by Kueue ends, and it runs without Kueue."""
    if b.old_phase in TERMINAL:
        return q
    view = q.view if q is not None else None
    if q is not None and view is not None and view.quota_reserved and o.own and q.name != view.queue:
        return replace(q, name=view.queue)
    if q is None or q.name is None:
        _leave_queue(b, q)
        return None
    if view is None and "queue" not in b.old and (o.own or b.old_phase in (RUNNING, RESTARTING)):
        _ignore_queue(b, q.name)
        return None
    b.clear(COND_QUEUE_IGNORED, "Queued", f"Queued in LocalQueue {q.name}")
    return q


def _leave_queue(b: JobBuilder, q: QueueInput | None) -> None:
    """No queue named any more: delete the Workload (its quota goes with it), end a suspension
    by Kueue, and announce it once (status.queue goes)."""
    message = "The job names no LocalQueue any more: it runs without Kueue"
    if q is not None and q.workload is not None:
        meta = q.workload.get("metadata") or {}
        b.plan.delete_workload = (str(meta.get("name") or qu.workload_name(b.ref)), meta.get("uid"))
        message += f" (Workload {meta.get('name')} deleted)"
    evicted = evicted_by_kueue(b)
    if evicted:
        message += ", from its last checkpoint"
        b.cond(COND_SUSPENDED, False, "QueueRemoved", message)
        b.status.pop("startTime", None)
    if evicted or "queue" in b.old:
        b.event("Normal", "LeftQueue", message)
    b.status.pop("queue", None)
    b.clear(COND_QUEUE_IGNORED, "NoQueue", "The job names no LocalQueue")


def _ignore_queue(b: JobBuilder, name: str) -> None:
    """A queue named after the job started: Kueue ignores a queue-name added to a running Job."""
    message = (
        f"The job started without a queue: LocalQueue {name} is ignored while it runs "
        "(it applies when the job starts again after runPolicy.suspend)"
    )
    old = next((c for c in b.old.get("conditions") or [] if c.get("type") == COND_QUEUE_IGNORED), {})
    if old.get("status") != "True":
        b.event("Warning", "QueueIgnored", message)
    b.cond(COND_QUEUE_IGNORED, True, "JobRunning", message)


def _queued(b: JobBuilder, message: str) -> Plan:
    """No Pods while queued: Pending, or still Suspended when queued again after an eviction."""
    return b.finish(SUSPENDED if evicted_by_kueue(b) else PENDING, message)


def _kueue_suspend(b: JobBuilder, o: Observed, view: ad.WorkloadView | None, preemptor: str | None) -> Plan:
    """Kueue took the quota back: suspend as runPolicy.suspend does (a new attempt, no restart
    counted, Pods deleted, the checkpoint kept, the deadline clock stopped)."""
    s = b.status
    if evicted_by_kueue(b):
        message = b.old.get("message") or "Evicted by Kueue"
    else:
        s["attempt"] += 1
        eviction = view.eviction if view is not None else None
        if eviction is not None:
            message = ad.eviction_event(eviction, preemptor)
            reason = "Preempted" if eviction.preempted else "Evicted"
        else:
            message, reason = "Kueue no longer admits the job; Pods deleted, checkpoint kept", "Evicted"
        b.event("Normal", reason, message)
        b.cond(COND_SUSPENDED, True, REASON_EVICTED, message)
        b.clear(COND_RUNNING, REASON_EVICTED, message)
        b.clear(COND_RESTARTING, REASON_EVICTED, message)
    s.pop("startTime", None)
    _ranks_reset(b, o, s["attempt"])
    b.plan.delete_pods = sorted(p.name for p in o.own if not p.deleting)
    return b.finish(SUSPENDED, message)


def _admitted(b: JobBuilder, o: Observed, view: ad.WorkloadView, q: QueueInput) -> Plan | None:
    """Admitted: the Pods get Kueue's placement; after an eviction the job resumes from its
    checkpoint (a new attempt started at the suspension)."""
    try:
        b.plan.placement = ad.placement(view, q.flavors, o.spec.node_selector)
    except ad.PlacementConflict as exc:
        return _fail(b, o, "PlacementConflict", f"Kueue's placement contradicts the job: {exc}")
    if (b.old.get("queue") or {}).get("state") != "Admitted":
        b.event("Normal", "Admitted", f"Admitted by ClusterQueue {view.cluster_queue}")
    if evicted_by_kueue(b):
        epoch = (b.status.get("progress") or {}).get("epoch")
        where = f"epoch {epoch}" if epoch is not None else "the start (no epoch reported yet)"
        b.event("Normal", "Resumed", f"Resumed at {where}: recreating its Pods from the last checkpoint")
        b.cond(COND_SUSPENDED, False, "Admitted", "Kueue admitted the job again")
        b.status.pop("startTime", None)
    return None


def workload_upkeep(p: Plan, b: JobBuilder, o: Observed, q: QueueInput) -> None:
    """The Workload's side of any plan: Finished when the job ends, spec.active following
    runPolicy.suspend, and the quota given back once an evicted gang's Pods are gone."""
    view = q.view
    if view is None or q.workload is None or view.finished:
        return
    phase = p.status.get("phase")
    if phase in TERMINAL:
        p.workload_status = qu.finished_status(
            q.workload, phase == SUCCEEDED, p.status.get("message") or str(phase), b.now
        )
        return
    if view.active == o.spec.run_policy.suspend:
        p.workload_patch = qu.active_patch(not o.spec.run_policy.suspend)
    if view.eviction is not None and view.quota_reserved and not o.own:
        p.workload_status = qu.release_quota_status(q.workload, b.now)
    elif view.admitted and p.status.get("ready") == f"{o.spec.replicas}/{o.spec.replicas}":
        if not _workload_condition(q.workload, qu.COND_PODS_READY):
            # for Kueue's waitForPodsReady (else it evicts the gang after its timeout)
            p.workload_status = qu.pods_ready_status(q.workload, True, b.now)


def _workload_condition(workload: Mapping[str, Any], type_: str) -> bool:
    conditions = (workload.get("status") or {}).get("conditions") or []
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


def _decide(b: JobBuilder, o: Observed, queue: QueueInput | None) -> Plan:
    for step in (plan_finished, plan_suspended):
        decided = step(b, o)
        if decided is not None:
            return decided
    if queue is not None:
        decided = plan_queue(b, o, queue)
        if decided is not None:
            return decided
    return plan_failures(b, o) or plan_progress(b, o)


def plan(
    job: JobRef,
    spec: TrainingJobSpec,
    status: Mapping[str, Any] | None,
    pods: Sequence[pd.PodSummary],
    reports: Mapping[str, TrainerReport],
    now: datetime,
    queue: QueueInput | None = None,
) -> Plan:
    """Decide the job's next status and actions from what is observed now; `queue`: the Kueue
    side of a job that names a LocalQueue (None: not queued, no admission step)."""
    b = JobBuilder(job, dict(status or {}), now, MANAGED_STATUS, Plan)
    o = observe(b, spec, pods, reports)
    queue = queue_in_force(b, o, queue)
    decided = _decide(b, o, queue)
    if queue is not None:
        workload_upkeep(decided, b, o, queue)
    return decided


def _apply_reports(s: dict[str, Any], job: JobRef, reports: Mapping[str, TrainerReport]) -> None:
    """Progress from rank 0's log (the fallback channel; the receiver writes it otherwise)."""
    rank0 = reports.get(pod_name(job.name, 0))
    if rank0 is None:
        return
    progress = progress_of(rank0)
    if progress is not None:
        s["progress"] = progress
    if rank0.metrics:
        s["metrics"] = dict(rank0.metrics)
    if rank0.mlflow_run_id:
        s["mlflowRunId"] = rank0.mlflow_run_id


def _apply_rank0_result(s: dict[str, Any]) -> None:
    """The job's result and MLflow run: rank 0's, once it has finished."""
    rank0 = next((e for e in s.get("ranks") or [] if e.get("rank") == 0), None)
    result = (rank0 or {}).get("result") or {}
    if result.get("status"):
        s["result"] = result["status"]
    if result.get("mlflowRunId"):
        s["mlflowRunId"] = result["mlflowRunId"]


def _ended(b: JobBuilder, o: Observed, cond: str, reason: str, message: str) -> None:
    b.ended(cond, reason, message, (COND_RUNNING, COND_RESTARTING))
    b.plan.delete_pods = _pods_to_clean(o.own, o.spec.run_policy.clean_pod_policy)


def _fail(b: JobBuilder, o: Observed, reason: str, message: str) -> Plan:
    _ended(b, o, COND_FAILED, reason, message)
    b.event("Warning", reason, message)
    return b.finish(FAILED, message)


def _succeed(b: JobBuilder, o: Observed) -> Plan:
    result = b.status.get("result") or "completed"
    reason = RESULT_REASONS.get(result, "Completed")
    message = f"All {len(b.status['ranks'])} rank(s) finished ({result})"
    hashes = {e.get("result", {}).get("weightsSha256") for e in b.status["ranks"]}
    hashes.discard(None)
    if len(hashes) > 1:
        message += "; WARNING: ranks reported different weight hashes"
    _ended(b, o, COND_SUCCEEDED, reason, message)
    b.event("Normal", "Succeeded", message)
    return b.finish(SUCCEEDED, message)


POSITION_REFRESH_S = 15.0
"""How often a job waiting in a queue looks at its place again (from the visibility API's
cache, kueue_io.PendingCache): the jobs ahead of it leave without an event of its own."""


def position_refresh_after(status: Mapping[str, Any], queue: QueueInput | None) -> float | None:
    """Seconds until a waiting job's queue position is worth reading again; None when not."""
    waiting = (status.get("queue") or {}).get("state") == "Queued"
    return POSITION_REFRESH_S if queue is not None and queue.position_tracked and waiting else None


DEADLINE_MARGIN_S = 0.5
"""Wake a little after a deadline, never before it: the planner's checks are strict."""


def requeue_after(spec: TrainingJobSpec, status: Mapping[str, Any], now: datetime) -> float | None:
    """Seconds until the job's next deadline that only the clock brings (no watch event will
    announce it): the TTL of a finished job, or activeDeadlineSeconds of an active one; None
    when there is none. Pure, like plan()."""
    policy, phase = spec.run_policy, status.get("phase")
    if phase in TERMINAL:
        seconds, since = policy.ttl_seconds_after_finished, parse_time(status.get("completionTime"))
    elif phase == SUSPENDED:
        return None
    else:
        seconds, since = policy.active_deadline_seconds, parse_time(status.get("startTime"))
    if seconds is None or since is None:
        return None
    left = (since + timedelta(seconds=seconds) - now).total_seconds()
    return max(left, 0.0) + DEADLINE_MARGIN_S
