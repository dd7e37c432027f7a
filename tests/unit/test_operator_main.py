"""main: the settings read once become the handlers' registry (kopf's login included)."""

from __future__ import annotations

import pytest
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.main import build_registry

pytestmark = pytest.mark.unit


def ids(handlers) -> list[str]:
    return sorted(str(h.id) for h in handlers)


def test_the_registry_holds_every_handler_with_the_settings_intervals():
    cfg = OperatorConfig(reconcile_interval_s=7, study_reconcile_interval_s=11)
    registry = build_registry(cfg)
    activities = ids(registry._activities.get_all_handlers())
    assert activities == ["close_storages", "configure", "configure_studies", "login_via_client"]
    assert ids(registry._indexing.get_all_handlers()) == ["trainer_pods"]
    assert ids(registry._changing.get_all_handlers()) == [
        "check_spec", "check_spec", "check_study_spec", "check_study_spec", "cleanup", "delete_study",
    ]  # fmt: skip
    timers = {str(h.id): h.interval for h in registry._spawning.get_all_handlers()}
    assert timers == {"reconcile": 7, "reconcile_study": 11}
