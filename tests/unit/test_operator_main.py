"""main: the settings read once become the handlers' registry (kopf's login included)."""

from __future__ import annotations

import pytest
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.core.objects import JOB_PLURAL
from dmlt_operator.main import build_registry

pytestmark = pytest.mark.unit


def ids(handlers) -> list[str]:
    return sorted(str(h.id) for h in handlers)


def test_the_registry_holds_every_handler_with_the_settings_intervals():
    cfg = OperatorConfig(reconcile_interval_s=7, study_reconcile_interval_s=11)
    registry = build_registry(cfg)
    activities = ids(registry._activities.get_all_handlers())
    assert activities == ["close_storages", "configure", "configure_studies", "login_via_client", "shutdown"]
    assert ids(registry._indexing.get_all_handlers()) == [
        "kueue_workloads", "study_trials", "trainer_pods", "trainingjobs", "tuningstudies",
    ]  # fmt: skip
    assert ids(registry._watching.get_all_handlers()) == [
        "job_event", "pod_event", "study_event", "trial_job_event", "workload_event",
    ]  # fmt: skip
    assert ids(registry._changing.get_all_handlers()) == [
        "check_study_spec",
        "check_study_spec",
        "delete_study",
    ]
    # Neither TrainingJobs nor TuningStudies have a timer: watch events wake them.
    assert registry._spawning.get_all_handlers() == []


def test_studies_keep_a_finalizer_for_their_delete_handler():
    """Without a timer, the delete handler alone makes kopf put its finalizer on studies: it
    must not be optional, or a deleted study would leave its Optuna study behind."""
    registry = build_registry(OperatorConfig())
    (delete,) = [h for h in registry._changing.get_all_handlers() if str(h.id) == "delete_study"]
    assert delete.requires_finalizer


def test_nothing_asks_kopf_for_a_finalizer_on_trainingjobs():
    """Without a timer, daemon or on.delete for jobs, kopf adds no finalizer to them and removes
    the one an older operator added ("no handlers requiring it")."""
    registry = build_registry(OperatorConfig())
    for handler in registry._changing.get_all_handlers() + registry._spawning.get_all_handlers():
        selector = getattr(handler, "selector", None)
        assert JOB_PLURAL not in str(selector), handler.id
