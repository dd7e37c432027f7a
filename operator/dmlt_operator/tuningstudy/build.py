"""Pure builders: a TuningStudy's spec + one trial's sampled values → that trial's TrainingJob.

A trial job is the study's `trialTemplate` with the sampled values merged into its `trainer`
block, the trainer flags that make the run trial N of the study appended to
`trainer.extraArgs`, and the Optuna storage URL passed as the contract's STORAGE_ENV from a Secret
(never in the arguments, which anyone who can list Pods reads). Its name, `<study>-t<N>`, is
deterministic, so a reconcile that runs twice creates nothing twice (409 AlreadyExists).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from dmlt_contract import STORAGE_ENV
from dmlt_operator.core.objects import (
    API_VERSION,
    JOB_KIND,
    LABEL_COMPONENT,
    STUDY_KIND,
    ObjectRef,
    managed_labels,
    owner_reference,
)
from dmlt_operator.trainingjob.build import format_number
from dmlt_operator.trainingjob.queueing import PRIORITY_CLASS_LABEL, priority_class_name
from dmlt_operator.trainingjob.spec import check_job_name, parse_spec
from dmlt_operator.tuningstudy.spec import (
    MAX_FAILED_TRIALS,
    MAX_TRIALS,
    PARAMETER_KINDS,
    SecretKeyRef,
    StudySpecError,
    TuningStudySpec,
    trainer_value,
)

LABEL_STUDY = "dmlt.io/study"
LABEL_TRIAL = "dmlt.io/trial"
ANNOTATION_PARAMS = "dmlt.io/trial-params"
ANNOTATION_STARTED = "dmlt.io/trial-started"
"""When the trial was asked: tells this trial's job from one left by an earlier trial N."""
DEFAULT_EXPERIMENT = "dmlt"


@dataclass(frozen=True, slots=True)
class StudyRef(ObjectRef):
    """The identity of a TuningStudy object: enough to name and own its trial jobs (the same
    metadata fields as a TrainingJob's), and what its trials inherit from its labels."""

    priority_class: str | None = None
    """The study's `kueue.x-k8s.io/priority-class` label: every trial job gets it, so the
    trials queue with the study's WorkloadPriorityClass."""

    @classmethod
    def from_body(cls, body: Any) -> StudyRef:
        base = ObjectRef.from_body(body)
        priority = priority_class_name(body.get("metadata") or {})
        return cls(base.name, base.namespace, base.uid, base.generation, priority)

    @property
    def optuna_name(self) -> str:
        """The Optuna study's name: unique across namespaces sharing one database."""
        return f"{self.namespace}.{self.name}"


def trial_job_name(study: str, number: int) -> str:
    return f"{study}-t{number}"


def study_labels(study: str) -> dict[str, str]:
    """Labels on every trial job of a study; also the selector that lists them."""
    return managed_labels(LABEL_STUDY, study)


def study_selector(study: str) -> str:
    return ",".join(f"{k}={v}" for k, v in study_labels(study).items())


def trial_labels(study: str, number: int) -> dict[str, str]:
    return {**study_labels(study), LABEL_COMPONENT: "trial", LABEL_TRIAL: str(number)}


def tracking_uri(spec: TuningStudySpec, default: str = "") -> str:
    """The MLflow server of the study: its own, else its template's, else the operator's."""
    template = spec.trial_template.get("mlflow") or {}
    return spec.mlflow.tracking_uri or str(template.get("trackingUri") or "") or default


def experiment_name(spec: TuningStudySpec) -> str:
    """Parent and child runs share one experiment (MLflow nests runs only within one)."""
    template = spec.trial_template.get("mlflow") or {}
    return spec.mlflow.experiment or str(template.get("experiment") or "") or DEFAULT_EXPERIMENT


def registered_model_name(spec: TuningStudySpec, ref: StudyRef) -> str:
    return spec.mlflow.registered_model or ref.name


def trial_flags(spec: TuningStudySpec, ref: StudyRef, number: int, parent_run_id: str | None) -> list[str]:
    """dmlt-train flags that make the run trial `number` of the study (after extraArgs)."""
    p = spec.pruner
    flags = [
        "--study-name", ref.optuna_name,
        "--trial-number", str(number),
        "--objective", spec.objective.metric,
        "--direction", spec.objective.direction,
        "--pruner", p.name,
        "--pruner-startup-trials", str(p.startup_trials),
        "--pruner-warmup-steps", str(p.warmup_steps),
        "--pruner-percentile", repr(float(p.percentile)),
        "--pruner-min-resource", str(p.min_resource),
        "--pruner-reduction-factor", str(p.reduction_factor),
    ]  # fmt: skip
    if parent_run_id:
        flags += ["--parent-run-id", parent_run_id]
    return flags


def trial_trainer(spec: TuningStudySpec, params: dict[str, Any]) -> dict[str, Any]:
    """The template's trainer block with the sampled values in place."""
    trainer = copy.deepcopy(spec.trial_template.get("trainer") or {})
    for name, raw in params.items():
        if name not in PARAMETER_KINDS:
            raise StudySpecError(f"trial parameter {name!r} is not a tunable trainer setting")
        try:
            trainer[name] = trainer_value(name, raw)
        except ValueError as exc:
            raise StudySpecError(f"trial parameter {exc}") from None
    return trainer


def storage_env(secret: SecretKeyRef) -> dict[str, Any]:
    return {"name": STORAGE_ENV, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}}


def build_trial_job(
    ref: StudyRef,
    spec: TuningStudySpec,
    number: int,
    params: dict[str, Any],
    storage_secret: SecretKeyRef,
    parent_run_id: str | None,
    started: str | None = None,
) -> dict[str, Any]:
    """The TrainingJob that runs trial `number` with `params` (Optuna's sampled values);
    `started` (the trial's start time in the database) marks which trial N it is."""
    name = trial_job_name(ref.name, number)
    job_spec = copy.deepcopy(spec.trial_template)
    trainer = trial_trainer(spec, params)
    flags = trial_flags(spec, ref, number, parent_run_id)
    trainer["extraArgs"] = list(trainer.get("extraArgs") or []) + flags
    job_spec["trainer"] = trainer
    env = [e for e in job_spec.get("env") or [] if e.get("name") != STORAGE_ENV]
    job_spec["env"] = env + [storage_env(storage_secret)]
    mlflow = dict(job_spec.get("mlflow") or {})
    uri = tracking_uri(spec)
    if uri:
        mlflow["trackingUri"] = uri
    mlflow["experiment"] = experiment_name(spec)
    job_spec["mlflow"] = mlflow
    try:
        check_job_name(name)
        parse_spec(job_spec)
    except ValueError as exc:
        raise StudySpecError(f"trial job {name}: {exc}") from None
    annotations = {ANNOTATION_PARAMS: json.dumps(params, sort_keys=True, separators=(",", ":"))}
    if started:
        annotations[ANNOTATION_STARTED] = started
    labels = trial_labels(ref.name, number)
    if ref.priority_class:
        labels[PRIORITY_CLASS_LABEL] = ref.priority_class  # Kueue's label, as on the study
    return {
        "apiVersion": API_VERSION,
        "kind": JOB_KIND,
        "metadata": {
            "name": name,
            "namespace": ref.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(ref, STUDY_KIND)],
        },
        "spec": job_spec,
    }


def format_params(params: dict[str, Any]) -> str:
    """`lr=0.0012, hiddenDims=256-128` for events and messages."""
    return ", ".join(f"{k}={format_number(v)}" for k, v in sorted(params.items()))


def representative_params(spec: TuningStudySpec) -> dict[str, Any]:
    """One value per parameter (its maximum or last choice), to build a trial job up front."""
    params: dict[str, Any] = {}
    for p in spec.parameters:
        if p.type == "categorical":
            params[p.name] = (p.choices or [None])[-1]
        elif p.type == "int":
            params[p.name] = int(p.max or 0)
        else:
            params[p.name] = float(p.max or 0.0)
    return params


def check_trial_job(ref: StudyRef, spec: TuningStudySpec, storage_secret: SecretKeyRef | None) -> None:
    """Raise StudySpecError if the study's trial jobs would be invalid TrainingJobs (e.g. the
    template's extraArgs leave no room for the trial flags), before any trial is asked and
    before the storage is looked at (a stand-in Secret when none is configured yet)."""
    number = MAX_TRIALS + MAX_FAILED_TRIALS
    secret = storage_secret or SecretKeyRef(name=ref.name, key="url")
    build_trial_job(ref, spec, number, representative_params(spec), secret, "0" * 32)
