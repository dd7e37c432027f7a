"""A TuningStudy's identity, a start time and a small spec, for tests of the study planner."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dmlt_operator.tuningstudy.build import StudyRef
from dmlt_operator.tuningstudy.spec import parse_study_spec

REF = StudyRef("s", "ns", "study-uid", 1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(**overrides: Any):
    raw = {
        "parameters": [{"name": "lr", "type": "float", "min": 1e-4, "max": 1e-1, "log": True}],
        "trialTemplate": {"image": "i"},
        "maxTrials": 8,
        "parallelism": 2,
        "maxFailedTrials": 3,
    }
    raw.update(overrides)
    return parse_study_spec(raw)
