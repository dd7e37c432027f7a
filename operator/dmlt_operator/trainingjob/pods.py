"""Pure summaries of a job's trainer Pods: the few facts the planner needs about each rank.

`summarize_pod` turns a Pod (as the kopf index sees it) into a `PodSummary`; nothing here
talks to Kubernetes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dmlt_operator.core.conditions import FAILED, PENDING, RUNNING, SUCCEEDED
from dmlt_operator.core.objects import JOB_KIND, controller_uid
from dmlt_operator.trainingjob import build
from dmlt_operator.trainingjob.progress import parse_termination_message

# States of a rank, as shown in status.ranks[].state: the phase names, and two of their own.
ABSENT = "Absent"
TERMINATING = "Terminating"


@dataclass(frozen=True, kw_only=True, slots=True)
class PodSummary:
    """What the reconciler needs to know about one trainer Pod."""

    name: str
    rank: int
    attempt: int
    owner_uid: str | None
    uid: str | None
    phase: str
    """The Pod's phase: Pending, Running, Succeeded, Failed or Unknown."""
    deleting: bool = False
    ready: bool = False
    started: bool = False
    """The trainer container has started (is running or has terminated)."""
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    node: str | None = None
    result_items: tuple[tuple[str, Any], ...] = ()
    """The rank's result (status.ranks[].result) from its termination message, as items."""
    created: str | None = None
    """metadata.creationTimestamp (RFC 3339)."""

    @property
    def result(self) -> dict[str, Any] | None:
        return dict(self.result_items) or None

    @property
    def state(self) -> str:
        if self.phase == "Succeeded":
            return SUCCEEDED
        if self.phase == "Failed":
            return FAILED
        if self.deleting:
            return TERMINATING
        if self.phase == "Running" and self.started:
            return RUNNING
        return PENDING


def _int_label(labels: Mapping[str, str], key: str) -> int | None:
    try:
        value = int(labels.get(key, ""))
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def _short(text: Any, limit: int = 256) -> str | None:
    if not text:
        return None
    text = str(text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _container_facts(container: Mapping[str, Any] | None) -> dict[str, Any]:
    """started, exit_code, reason, message and result of the trainer container's state. A
    termination message that is the trainer's `finished` event is its result, not a message."""
    state = (container or {}).get("state") or {}
    if "running" in state:
        return {"started": True}
    if "terminated" in state:
        terminated = state["terminated"] or {}
        exit_code = terminated.get("exitCode")
        result = parse_termination_message(terminated.get("message"))
        return {
            "started": True,
            "exit_code": exit_code if isinstance(exit_code, int) else None,
            "reason": terminated.get("reason"),
            "message": None if result else terminated.get("message"),
            "result": result,
        }
    waiting = state.get("waiting") or {}
    return {"reason": waiting.get("reason"), "message": waiting.get("message")}


def summarize_pod(body: Mapping[str, Any]) -> PodSummary | None:
    """Summarize a trainer Pod; None for a Pod without valid dmlt labels."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    rank = _int_label(labels, build.LABEL_RANK)
    attempt = _int_label(labels, build.LABEL_ATTEMPT)
    if rank is None or attempt is None or not meta.get("name"):
        return None
    pod_status = body.get("status") or {}
    phase = pod_status.get("phase") or "Pending"
    container = next(
        (c for c in pod_status.get("containerStatuses") or [] if c.get("name") == build.TRAINER_CONTAINER),
        None,
    )
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in pod_status.get("conditions") or []
    )
    facts = _container_facts(container)
    reason = pod_status.get("reason") or facts.get("reason")
    message = pod_status.get("message") or facts.get("message")
    if phase == "Pending" and not reason:
        for cond in pod_status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                reason = cond.get("reason") or "Unschedulable"
                message = cond.get("message")
    return PodSummary(
        name=meta["name"],
        rank=rank,
        attempt=attempt,
        owner_uid=controller_uid(meta, JOB_KIND),
        uid=meta.get("uid"),
        phase=phase,
        deleting=bool(meta.get("deletionTimestamp")),
        ready=ready,
        started=bool(facts.get("started")),
        exit_code=facts.get("exit_code"),
        reason=_short(reason, 128),
        message=_short(message),
        node=(body.get("spec") or {}).get("nodeName"),
        result_items=tuple(sorted((facts.get("result") or {}).items())),
        created=meta.get("creationTimestamp"),
    )


def describe_failure(pod: PodSummary) -> str:
    """One line saying why a rank's Pod is considered failed."""
    parts = [f"rank {pod.rank} (pod {pod.name})"]
    if pod.phase == "Failed":
        detail = pod.reason or "Error"
        if pod.exit_code is not None:
            detail += f", exit code {pod.exit_code}"
        parts.append(f"failed: {detail}")
    else:
        parts.append("was deleted while the job was running")
    if pod.message and pod.phase == "Failed":
        parts.append(f"({pod.message})")
    return " ".join(parts)
