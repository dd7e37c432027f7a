"""Typed TrainingJob spec: parsed once from the custom resource, then passed around.

The CRD's OpenAPI schema (helm/dmlt/crds/) is what users meet first: the apiserver applies
its defaults and rejects invalid objects. These models repeat the same defaults and bounds so
the operator never trusts an object blindly (an older CRD, a hand-edited object, a unit test)
and can say exactly which field is wrong. tests/unit/test_crd_schema.py keeps the two in step.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from dmlt_contract import DatasetName
from dmlt_operator.core import kube_formats as kf
from dmlt_operator.core.spec import SpecError, SpecModel, check_name, field_path, refuse_repeated
from pydantic import (
    AfterValidator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

MAX_JOB_NAME = 50
"""`<job>-<rank>` must be a DNS label (63 chars) and `<job>` a Service name (DNS-1035)."""
GPU_RESOURCE = "nvidia.com/gpu"
BACKENDS = ("auto", "gloo", "nccl")
CLEAN_POD_POLICIES = ("All", "Running", "None")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def _quantity(value: int | str) -> int | str:
    kf.quantity(value)
    return value


Quantity = Annotated[StrictInt | StrictStr, AfterValidator(_quantity)]
ResourceName = Annotated[str, AfterValidator(kf.check_resource_name)]
DnsSubdomain = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=kf.DNS_SUBDOMAIN)]
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=kf.LABEL_VALUE)]
LabelKey = Annotated[str, AfterValidator(kf.check_label_key)]


def _extended_resources_are_whole(quantities: dict[str, int | str]) -> dict[str, int | str]:
    for name, value in quantities.items():
        if kf.is_extended_resource(name) and kf.quantity(value) != int(kf.quantity(value)):
            raise ValueError("extended resources (such as nvidia.com/gpu) take whole numbers")
    return quantities


ResourceList = Annotated[
    dict[ResourceName, Quantity], Field(max_length=16), AfterValidator(_extended_resources_are_whole)
]


def check_requests_within_limits(requests: dict[str, Any], limits: dict[str, Any]) -> None:
    """Kubernetes' rules between a container's requests and limits, with the CRD's messages."""
    for name, value in requests.items():
        if name in limits and kf.quantity(value) > kf.quantity(limits[name]):
            raise ValueError("every request must be less than or equal to its limit")
        if not kf.is_overcommittable(name) and (
            name not in limits or kf.quantity(value) != kf.quantity(limits[name])
        ):
            raise ValueError(
                "an extended resource (such as nvidia.com/gpu) or hugepages requested needs an equal limit"
            )


class ResourcesSpec(SpecModel):
    """Container resources, as in a Pod (quantities are strings or integers)."""

    requests: ResourceList = Field(default_factory=dict)
    limits: ResourceList = Field(default_factory=dict)

    @model_validator(mode="after")
    def _requests_within_limits(self) -> ResourcesSpec:
        check_requests_within_limits(self.requests, self.limits)
        return self

    def gpus(self) -> int:
        raw = self.limits.get(GPU_RESOURCE, self.requests.get(GPU_RESOURCE, 0))
        return int(kf.quantity(raw))


Width = Annotated[int, Field(ge=1, le=65536)]


class TrainerSpec(SpecModel):
    """The trainer's own settings; each becomes a dmlt-train flag."""

    dataset: DatasetName = "synthetic"
    data_path: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    target: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    n_samples: Annotated[int, Field(ge=100)] | None = None
    epochs: Annotated[int, Field(ge=1, le=100_000)] = 10
    batch_size: Annotated[int, Field(ge=2, le=1_000_000)] = 1024
    lr: Annotated[float, Field(gt=0, le=10)] = 0.003
    hidden_dims: Annotated[list[Width], Field(min_length=1, max_length=16)] = Field(
        default_factory=lambda: [512, 256, 128]
    )
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.2
    weight_decay: Annotated[float, Field(ge=0)] = 0.0001
    seed: Annotated[int, Field(ge=0)] = 42
    early_stopping_patience: Annotated[int, Field(ge=0)] = 0
    extra_args: Annotated[list[str], Field(max_length=64)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _file_needs_path_and_target(self) -> TrainerSpec:
        if self.dataset == "file" and (self.data_path is None or self.target is None):
            raise ValueError("dataset file needs trainer.dataPath and trainer.target")
        return self


class FieldRef(SpecModel):
    api_version: Literal["v1"] = "v1"
    field_path: Annotated[str, StringConstraints(max_length=512, pattern=kf.FIELD_PATH)]


class ResourceFieldRef(SpecModel):
    container_name: Annotated[str, StringConstraints(max_length=63, pattern=kf.DNS_LABEL)] | None = None
    resource: Annotated[str, StringConstraints(max_length=128, pattern=kf.RESOURCE_FIELD)]
    divisor: Quantity | None = None


class KeyRef(SpecModel):
    """A key of a ConfigMap or Secret in the job's namespace."""

    name: DnsSubdomain
    key: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=kf.CONFIG_KEY)]
    optional: StrictBool | None = None


class EnvVarSource(SpecModel):
    """valueFrom of an env var, as in a Pod: exactly one source."""

    field_ref: FieldRef | None = None
    resource_field_ref: ResourceFieldRef | None = None
    config_map_key_ref: KeyRef | None = None
    secret_key_ref: KeyRef | None = None

    @model_validator(mode="after")
    def _one_source(self) -> EnvVarSource:
        sources = (self.field_ref, self.resource_field_ref, self.config_map_key_ref, self.secret_key_ref)
        if sum(s is not None for s in sources) != 1:
            raise ValueError(
                "valueFrom needs exactly one of fieldRef, resourceFieldRef, configMapKeyRef and secretKeyRef"
            )
        return self


def _env_var_source(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """Checked as a Pod's EnvVarSource, kept as the object the user wrote."""
    if raw is not None:
        EnvVarSource.model_validate(raw)
    return raw


class EnvVar(SpecModel):
    """One container environment variable (value or valueFrom, as in a Pod)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=kf.ENV_NAME)]
    value: Annotated[str, Field(max_length=32768)] | None = None
    value_from: Annotated[dict[str, Any] | None, AfterValidator(_env_var_source)] = None

    @model_validator(mode="after")
    def _value_or_value_from(self) -> EnvVar:
        if self.value_from is not None and self.value:
            raise ValueError("set only one of value and valueFrom")
        return self


class Toleration(SpecModel):
    """One toleration, as in a Pod."""

    key: Annotated[str, Field(max_length=kf.MAX_LABEL_KEY)] | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: LabelValue | None = None
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: StrictInt | None = None

    @field_validator("key")
    @classmethod
    def _label_key(cls, key: str | None) -> str | None:
        if key:
            kf.check_label_key(key)
        return key

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without a key needs operator Exists")
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


def _toleration(raw: dict[str, Any]) -> dict[str, Any]:
    """Checked as a Pod's toleration, kept as the object the user wrote."""
    Toleration.model_validate(raw)
    return raw


class ClaimRef(SpecModel):
    claim_name: DnsSubdomain


class EmptyDirSpec(SpecModel):
    size_limit: Quantity | None = None


class CheckpointSpec(SpecModel):
    """Where rank 0 keeps checkpoints: an existing PVC (survives restarts) or an emptyDir."""

    persistent_volume_claim: ClaimRef | None = None
    empty_dir: EmptyDirSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> CheckpointSpec:
        if self.persistent_volume_claim is not None and self.empty_dir is not None:
            raise ValueError("set only one of persistentVolumeClaim and emptyDir")
        return self


class MlflowSpec(SpecModel):
    tracking_uri: Annotated[str, Field(max_length=2048)] = ""
    experiment: Annotated[str, Field(min_length=1, max_length=253)] = "dmlt"


class RendezvousSpec(SpecModel):
    port: Annotated[int, Field(ge=1024, le=65535)] = 29500
    timeout_seconds: Annotated[int, Field(ge=30, le=86400)] = 900


class RunPolicy(SpecModel):
    backoff_limit: Annotated[int, Field(ge=0, le=1000)] = 3
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = None
    clean_pod_policy: Literal["All", "Running", "None"] = "Running"
    suspend: bool = False


class TrainingJobSpec(SpecModel):
    """spec of a TrainingJob."""

    image: Annotated[str, Field(min_length=1, max_length=1024)]
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    replicas: Annotated[int, Field(ge=1, le=1024)] = 1
    procs_per_node: Annotated[int, Field(ge=1, le=64)] = 1
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    env: Annotated[list[EnvVar], Field(max_length=128)] = Field(default_factory=list)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    rendezvous: RendezvousSpec = Field(default_factory=RendezvousSpec)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    node_selector: Annotated[dict[LabelKey, LabelValue], Field(max_length=64)] = Field(default_factory=dict)
    tolerations: Annotated[
        list[Annotated[dict[str, Any], AfterValidator(_toleration)]], Field(max_length=64)
    ] = Field(default_factory=list)
    service_account_name: DnsSubdomain | None = None
    queue_name: Annotated[str, StringConstraints(max_length=63, pattern=kf.DNS_LABEL)] | None = None
    """Kueue LocalQueue that admits the gang (see trainingjob/queueing.py); or the label."""

    @field_validator("env")
    @classmethod
    def _unique_env(cls, env: list[EnvVar]) -> list[EnvVar]:
        refuse_repeated([e.name for e in env], "duplicate env names")
        return env

    @model_validator(mode="after")
    def _nccl_needs_gpus(self) -> TrainingJobSpec:
        if self.backend == "nccl" and self.resources.gpus() < 1:
            raise ValueError(f"backend nccl needs resources.limits[{GPU_RESOURCE!r}] >= 1")
        return self

    @property
    def effective_backend(self) -> str:
        """auto → nccl when the Pods ask for GPUs, else gloo."""
        if self.backend != "auto":
            return self.backend
        return "nccl" if self.resources.gpus() > 0 else "gloo"

    @property
    def world_size(self) -> int:
        return self.replicas * self.procs_per_node


def parse_spec(raw: dict[str, Any] | None) -> TrainingJobSpec:
    """Validate a TrainingJob's spec; raise SpecError naming each bad field."""
    try:
        return TrainingJobSpec.model_validate(raw or {})
    except ValidationError as exc:
        problems = [f"{field_path(tuple(err['loc']))}: {err['msg']}" for err in exc.errors()]
        raise SpecError("; ".join(problems)) from None


def check_job_name(name: str) -> None:
    """The job name becomes a Service name and part of each Pod's hostname."""
    check_name(name, MAX_JOB_NAME, "it names a Service and Pod hostnames")
