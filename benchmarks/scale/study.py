"""The study mode of the scale benchmark: one TuningStudy with `parallelism` P applied on kwok's
simulated nodes, whose trial Pods kwok completes some seconds after they run.

The trainer never runs on a simulated node, so no trial reports a result: every trial ends as
a failed trial (as any trial whose trainer never reported), the study's failure budget is set
out of reach, and its maxTrials too, so the study keeps replacing finished trials until the
benchmark has seen enough of them. The Optuna storage is a SQLite file that the local operator
process opens (the URL in a Secret of the study's namespace)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from benchmarks.scale import stats

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tuning.yaml"
STUDY_NAME = "scale-study"
STORAGE_SECRET = "scale-optuna"
STORAGE_KEY = "url"
STUDY_LABEL = "dmlt.io/study"


def example_study(path: Path = EXAMPLE) -> dict[str, Any]:
    """The TuningStudy document of the example manifest."""
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "TuningStudy":
            return doc
    raise ValueError(f"no TuningStudy in {path}")


def scale_study(namespace: str, parallelism: int, template: dict[str, Any]) -> dict[str, Any]:
    """`template` (examples/tuning.yaml's study) with `parallelism`, random sampling (cheap:
    no trial ever completes, so TPE would sample at random anyway), no pruner, no MLflow,
    maxTrials and maxFailedTrials out of reach, and the SQLite storage's Secret."""
    study = copy.deepcopy(template)
    study["metadata"] = {"name": STUDY_NAME, "namespace": namespace}
    spec = study["spec"]
    spec.update(
        parallelism=parallelism,
        maxTrials=10_000,
        maxFailedTrials=10_000,
        algorithm={"name": "random", "seed": 1},
        pruner={"name": "none"},
        storage={"secretRef": {"name": STORAGE_SECRET, "key": STORAGE_KEY}},
    )
    spec.pop("mlflow", None)
    spec["trialTemplate"].pop("mlflow", None)
    return study


def storage_secret(namespace: str, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": STORAGE_SECRET, "namespace": namespace},
        "stringData": {STORAGE_KEY: url},
    }


def trial_complete_stage(delay_ms: int, jitter_ms: int) -> dict[str, Any]:
    """A kwok Stage: a Running Pod of a TrainingJob exits 0 between `delay_ms` and `jitter_ms`
    after kwok saw it Running (kwok's own pod-complete stage takes only Pods of batch Jobs)."""
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": "dmlt-trial-complete"},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {
                "matchExpressions": [
                    {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                    {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                    {"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["TrainingJob"]},
                ]
            },
            "delay": {"durationMilliseconds": delay_ms, "jitterDurationMilliseconds": jitter_ms},
            "next": {
                "statusTemplate": _COMPLETED_STATUS,
            },
        },
    }


_COMPLETED_STATUS = """\
{{ $now := Now }}
containerStatuses:
{{ range $index, $item := .spec.containers }}
- image: {{ $item.image | Quote }}
  name: {{ $item.name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
{{ end }}
phase: Succeeded
"""


def replacement_lags(finished: Iterable[float], created: Iterable[float], parallelism: int) -> list[float]:
    """Seconds from each trial's Pods finishing to the trial job that took its slot.

    With every slot busy, each finished trial frees one slot and the study fills it with one
    new trial job; so the k-th finish (in time) is paired with the (P + k)-th job created. A
    finish without a job created after it yet has no lag; a pair out of order (the job seen
    first) counts 0."""
    ends = sorted(finished)
    starts = sorted(created)[parallelism:]
    return [max(0.0, start - end) for end, start in zip(ends, starts, strict=False)]


def summarize(
    job_seen: Mapping[str, float],
    job_running: Mapping[str, float],
    pod_finished: Mapping[str, float],
    parallelism: int,
    t0: float,
) -> dict[str, Any]:
    """The study's figures from the watches' timeline (Unix times; `t0`: the apply)."""
    created = sorted(job_seen.values())
    running = sorted(job_running.values())
    first = lambda times: times[parallelism - 1] - t0 if len(times) >= parallelism else None  # noqa: E731
    lags = replacement_lags(pod_finished.values(), created, parallelism)
    return {
        "trials_created_s": first(created),
        "trials_running_s": first(running),
        "trial_jobs_created": len(created),
        "trials_finished": len(pod_finished),
        "replacement_lag_s": stats.summary(lags),
    }
