"""The TuningStudy reconciler on a real PostgreSQL that is restarted in the middle of a study:
the operator's pooled connections die with the server, and the study must still end with
exactly maxTrials finished trials (the unit tests' harness, with a PostgreSQL URL)."""

from __future__ import annotations

import re

import pytest
from dmlt_operator.tuningstudy import handlers as h
from dmlt_operator.tuningstudy.store import StudyStore

from tests.helpers.study_harness import Harness

pytestmark = pytest.mark.integration


@pytest.fixture
def harness(postgres, tmp_path, request) -> Harness:
    hs = Harness(tmp_path, maxTrials=6)
    hs.url = postgres.create_database("study_" + re.sub(r"\W", "_", request.node.name)[-50:].lower())
    hs.kube.secrets = {("ns", "dmlt-postgresql", "url"): hs.url}
    hs.store = StudyStore(pool_size=2, connect_timeout_s=3)
    yield hs
    hs.store.close()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_database_restart_mid_study_loses_and_duplicates_nothing(postgres, harness, mode):
    hs = harness
    hs.tick()
    hs.run_trainers()
    hs.tick()  # trials 0 and 1 told, 2 and 3 asked: the pool holds live connections
    assert hs.body["status"]["trialsDone"] == "2/6"

    postgres.stop(mode)
    with pytest.raises(h.StorageUnavailable, match="Optuna storage unavailable"):
        hs.tick()
    status = hs.body["status"]
    assert status["phase"] == "Running"
    assert "password" not in status["message"] and postgres.password not in status["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["StorageReady"]["status"] == "False"
    postgres.start()

    hs.run_trainers()
    hs.run()  # the same StudyStore: pool_pre_ping replaces the dead connections
    assert hs.body["status"]["phase"] == "Succeeded"
    assert hs.db_states() == {"COMPLETE": 6}
    assert hs.kube.max_active <= 2
    if mode == "fast":
        assert len(hs.kube.created) == len(set(hs.kube.created)) == 6
    else:
        # This test server runs without fsync or synchronous commits, so a crash may lose the
        # last trials asked; their jobs are then stale and replaced, never told as results.
        assert set(hs.kube.created) == {f"study-t{n}" for n in range(6)}
    conditions = {c["type"]: c for c in hs.body["status"]["conditions"]}
    assert conditions["StorageReady"]["status"] == "True"
