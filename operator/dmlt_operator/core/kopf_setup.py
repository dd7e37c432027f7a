"""Operator-wide kopf settings (one operator process serves both resources), and what keeps
kopf's per-event work small: no diff-base for kinds without change handlers, no log line per
watch event of a hook that only marks a work queue."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

import kopf

from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.core.objects import GROUP, LABEL_MANAGED_BY, MANAGED_BY, STUDY_KIND

FINALIZER = "dmlt.io/finalizer"
CHANGE_HANDLED_KINDS = frozenset({STUDY_KIND})
"""The kinds with kopf change handlers (on.create/resume/update/delete): TuningStudies only.
TrainingJobs, Pods and Workloads have only indexes and watch hooks."""
WATCH_HOOKS: set[str] = set()
"""The on.event handlers that only mark a work queue (watch_hook): their per-event "succeeded"
log line is dropped."""


class ChangeHandledDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff-base in an annotation, built only for the kinds that have change handlers.
    kopf builds one on every event of every watched resource, a deep copy of the object, though
    only change handlers read it: a tenth of the operator's CPU in a burst of Pod events."""

    def __init__(self, kinds: Collection[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kinds = frozenset(kinds)

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if body.get("kind") not in self.kinds:
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)


def watch_hook(registry: kopf.OperatorRegistry, *resource: str, **filters: Any) -> Callable[[Any], Any]:
    """kopf.on.event for a hook that only marks a work queue; its "succeeded" line (one per
    watch event: thousands in a burst) is not logged."""

    def decorate(fn: Any) -> Any:
        WATCH_HOOKS.add(fn.__name__)
        return kopf.on.event(*resource, registry=registry, **filters)(fn)

    return decorate


class QuietWatchHooks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if not (message.startswith("Handler '") and message.endswith("' succeeded.")):
            return True
        return message[len("Handler '") : -len("' succeeded.")] not in WATCH_HOOKS


QUIET_WATCH_HOOKS = QuietWatchHooks()


def quiet_watch_hooks() -> None:
    """Drop the watch hooks' "succeeded" lines from kopf's per-object log (once)."""
    objects_log = logging.getLogger("kopf.objects")
    if QUIET_WATCH_HOOKS not in objects_log.filters:
        objects_log.addFilter(QUIET_WATCH_HOOKS)


def configure_kopf(settings: kopf.OperatorSettings, cfg: OperatorConfig | None = None) -> None:
    """Operator-wide kopf settings (one operator process serves both resources)."""
    workers = (cfg or OperatorConfig()).workers
    # The TrainingJob workers' planners and writes (DMLT_WORKERS), the study workers' (4:
    # tuningstudy/studyqueue.STUDY_WORKERS) and kopf's own sync handlers (a study's spec check
    # and deletion) share kopf's thread pool (a bare ThreadPoolExecutor: min(32, cpu + 4)
    # threads by default).
    settings.execution.max_workers = workers + 4
    # Server-side: only the Pods this operator made, not every Pod of the cluster.
    settings.watching.label_selectors["v1", "pods"] = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = ChangeHandledDiffBase(
        CHANGE_HANDLED_KINDS, prefix=GROUP, key="last-handled-configuration"
    )
    quiet_watch_hooks()
    # Only our explicit events become Kubernetes Events, not every log line.
    settings.posting.level = logging.INFO
    # Re-establish watches regularly: a silently dead watch would stall the index.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
