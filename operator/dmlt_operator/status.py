"""Pure status helpers: Pod summaries, per-rank states, trainer log parsing, conditions.

Nothing here talks to Kubernetes. `summarize_pod` turns a Pod (as the kopf index sees it) into
the few facts the reconciler needs; `parse_trainer_log` turns the tail of a rank's log into the
latest progress the trainer reported; `set_condition` keeps metav1.Condition semantics.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dmlt_operator import resources

# Pod-level states of a rank, as shown in status.ranks[].state.
ABSENT = "Absent"
PENDING = "Pending"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
TERMINATING = "Terminating"

FINISH_STATUSES = ("completed", "early_stopped", "pruned")
MAX_METRICS = 32
PRIORITY_METRICS = ("val_auc", "val_loss", "train_loss", "lr")
METRIC_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-/]{0,62}$")
# Waiting reasons that will not fix themselves; shown to the user, not acted upon.
STUCK_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- Pods


@dataclass(frozen=True, slots=True)
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


def _controller_uid(meta: Mapping[str, Any]) -> str | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "TrainingJob":
            return ref.get("uid")
    return None


def _short(text: Any, limit: int = 256) -> str | None:
    if not text:
        return None
    text = str(text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summarize_pod(body: Mapping[str, Any]) -> PodSummary | None:
    """Summarize a trainer Pod; None for a Pod without valid dmlt labels."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    rank = _int_label(labels, resources.LABEL_RANK)
    attempt = _int_label(labels, resources.LABEL_ATTEMPT)
    if rank is None or attempt is None or not meta.get("name"):
        return None
    pod_status = body.get("status") or {}
    phase = pod_status.get("phase") or "Pending"
    container = next(
        (
            c
            for c in pod_status.get("containerStatuses") or []
            if c.get("name") == resources.TRAINER_CONTAINER
        ),
        None,
    )
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in pod_status.get("conditions") or []
    )
    started = False
    exit_code = None
    reason = pod_status.get("reason")
    message = pod_status.get("message")
    if container:
        state = container.get("state") or {}
        if "running" in state:
            started = True
        elif "terminated" in state:
            started = True
            terminated = state["terminated"] or {}
            exit_code = terminated.get("exitCode")
            reason = reason or terminated.get("reason")
            message = message or terminated.get("message")
        elif "waiting" in state:
            waiting = state["waiting"] or {}
            reason = reason or waiting.get("reason")
            message = message or waiting.get("message")
    if phase == "Pending" and not reason:
        for cond in pod_status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                reason = cond.get("reason") or "Unschedulable"
                message = cond.get("message")
    return PodSummary(
        name=meta["name"],
        rank=rank,
        attempt=attempt,
        owner_uid=_controller_uid(meta),
        uid=meta.get("uid"),
        phase=phase,
        deleting=bool(meta.get("deletionTimestamp")),
        ready=ready,
        started=started,
        exit_code=exit_code if isinstance(exit_code, int) else None,
        reason=_short(reason, 128),
        message=_short(message),
        node=(body.get("spec") or {}).get("nodeName"),
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


# --------------------------------------------------------------------------- trainer logs


@dataclass(frozen=True, slots=True)
class TrainerReport:
    """The latest facts a rank printed as JSON lines."""

    epoch: int | None = None
    epochs: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    finished: dict[str, Any] | None = None
    """The `finished` event: status, weights hash, MLflow run id (camelCase keys)."""

    @property
    def empty(self) -> bool:
        return self.epoch is None and self.finished is None and not self.mlflow_run_id


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _clean_metrics(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict):
        return {}
    out: dict[str, float] = {}
    # The printer column and dashboards read these; keep them whatever else is reported.
    keys = [k for k in PRIORITY_METRICS if k in raw] + sorted(
        k for k in raw if k not in PRIORITY_METRICS and isinstance(k, str)
    )
    for key in keys:
        if len(out) >= MAX_METRICS:
            break
        value = _finite(raw[key])
        if isinstance(key, str) and METRIC_NAME_RE.match(key) and value is not None:
            out[key] = round(value, 6)
    return out


def _run_id(value: Any) -> str | None:
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", value):
        return value
    return None


def _json_objects(text: str) -> Iterable[dict[str, Any]]:
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith("{") and line.endswith("}")):
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            yield obj


def parse_trainer_log(text: str | None) -> TrainerReport:
    """The latest epoch and finished events in a log tail; anything malformed is skipped."""
    epoch = epochs = None
    metrics: dict[str, float] = {}
    run_id = None
    finished = None
    for obj in _json_objects(text or ""):
        kind = obj.get("event")
        if kind == "epoch":
            e, n = obj.get("epoch"), obj.get("epochs")
            if not (isinstance(e, int) and not isinstance(e, bool) and e >= 0):
                continue
            if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
                epochs = n
            epoch = e
            metrics = _clean_metrics(obj.get("metrics"))
            run_id = _run_id(obj.get("mlflow_run_id")) or run_id
        elif kind == "finished":
            status = obj.get("status")
            if status not in FINISH_STATUSES:
                continue
            finished = {"status": status}
            digest = obj.get("weights_sha256")
            if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
                finished["weightsSha256"] = digest
            rid = _run_id(obj.get("mlflow_run_id"))
            if rid:
                finished["mlflowRunId"] = rid
                run_id = run_id or rid
            world = obj.get("world_size")
            if isinstance(world, int) and not isinstance(world, bool) and world >= 1:
                finished["worldSize"] = world
    if epoch is not None and epochs is not None and epoch > epochs:
        epoch = epochs
    return TrainerReport(epoch=epoch, epochs=epochs, metrics=metrics, mlflow_run_id=run_id, finished=finished)


def progress_of(report: TrainerReport) -> dict[str, Any] | None:
    """status.progress for an epoch report, None when there is none."""
    if report.epoch is None:
        return None
    progress: dict[str, Any] = {"epoch": report.epoch}
    if report.epochs is not None:
        progress["epochs"] = report.epochs
        progress["summary"] = f"{report.epoch}/{report.epochs}"
        progress["percent"] = int(100 * report.epoch / report.epochs)
    else:
        progress["summary"] = str(report.epoch)
    return progress


# --------------------------------------------------------------------------- conditions


def set_condition(
    conditions: Iterable[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int | None = None,
) -> list[dict[str, Any]]:
    """Conditions with `type_` set; lastTransitionTime moves only when the status flips."""
    wanted = "True" if status else "False"
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        cond = dict(cond)
        if cond.get("type") == type_:
            found = True
            if cond.get("status") != wanted or not cond.get("lastTransitionTime"):
                cond["lastTransitionTime"] = format_time(now)
            cond.update(status=wanted, reason=reason, message=message[:1024])
            if observed_generation is not None:
                cond["observedGeneration"] = observed_generation
        out.append(cond)
    if not found:
        cond = {
            "type": type_,
            "status": wanted,
            "reason": reason,
            "message": message[:1024],
            "lastTransitionTime": format_time(now),
        }
        if observed_generation is not None:
            cond["observedGeneration"] = observed_generation
        out.append(cond)
    return out


def clear_condition(
    conditions: Iterable[Mapping[str, Any]],
    type_: str,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int | None = None,
) -> list[dict[str, Any]]:
    """Set `type_` to False only if it is present (absent conditions stay absent)."""
    conditions = list(conditions)
    if not any(c.get("type") == type_ for c in conditions):
        return [dict(c) for c in conditions]
    return set_condition(conditions, type_, False, reason, message, now, observed_generation)


def condition_is_true(conditions: Iterable[Mapping[str, Any]], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


def status_delta(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge-patch that turns `old` into `new` (None removes a key); {} when equal."""
    old = old or {}
    delta = {k: v for k, v in new.items() if old.get(k) != v}
    for key in old:
        if key not in new and key in MANAGED_STATUS_KEYS:
            delta[key] = None
    return delta


MANAGED_STATUS_KEYS = frozenset(
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
    }
)
