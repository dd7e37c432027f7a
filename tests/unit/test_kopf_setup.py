"""kopf's per-event work kept small: no diff-base for kinds without change handlers, and no log
line per watch event of a hook that only marks a work queue."""

from __future__ import annotations

import logging

import kopf
import pytest
from dmlt_operator.core import kopf_setup as ks
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.core.objects import GROUP, STUDY_KIND
from dmlt_operator.main import build_registry

pytestmark = pytest.mark.unit

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
       "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running"}}  # fmt: skip
STUDY = {"apiVersion": f"{GROUP}/v1", "kind": STUDY_KIND, "metadata": {"name": "s", "labels": {"a": "b"}},
         "spec": {"maxTrials": 3}, "status": {"phase": "Running"}}  # fmt: skip


def storage() -> ks.ChangeHandledDiffBase:
    return ks.ChangeHandledDiffBase(ks.CHANGE_HANDLED_KINDS, prefix=GROUP, key="last-handled-configuration")


def test_the_diff_base_is_built_only_for_kinds_with_change_handlers():
    assert storage().build(body=kopf.Body(POD)) == {}
    essence = storage().build(body=kopf.Body(STUDY))
    assert essence["spec"] == {"maxTrials": 3} and "status" not in essence  # kopf's own essence


def test_only_tuningstudies_have_change_handlers():
    """CHANGE_HANDLED_KINDS must name every kind with an on.create/resume/update/delete handler,
    or kopf would see no change for it."""
    registry = build_registry(OperatorConfig())
    plurals = {str(h.selector.any_name) for h in registry._changing.get_all_handlers()}
    assert plurals == {"tuningstudies"} and ks.CHANGE_HANDLED_KINDS == {STUDY_KIND}


def test_the_watch_hooks_succeeded_lines_are_dropped_and_the_rest_kept(caplog):
    build_registry(OperatorConfig())
    assert {"pod_event", "job_event", "workload_event", "study_event", "trial_job_event"} <= ks.WATCH_HOOKS
    ks.quiet_watch_hooks()
    ks.quiet_watch_hooks()  # once only
    objects_log = logging.getLogger("kopf.objects")
    assert objects_log.filters.count(ks.QUIET_WATCH_HOOKS) == 1
    with caplog.at_level(logging.INFO, logger="kopf.objects"):
        objects_log.info("Handler 'pod_event' succeeded.")
        objects_log.info("Handler 'delete_study' succeeded.")
        objects_log.error("Handler 'pod_event' failed with an exception. Will retry.")
    assert [r.getMessage() for r in caplog.records] == [
        "Handler 'delete_study' succeeded.",
        "Handler 'pod_event' failed with an exception. Will retry.",
    ]
