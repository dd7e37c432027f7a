"""Typed TrainingJob spec: parsed once from the custom resource, then passed around.

The CRD's OpenAPI schema (helm/dmlt/crds/) is what users meet first: the apiserver applies
its defaults and rejects invalid objects. These models repeat the same defaults and bounds so
the operator never trusts an object blindly (an older CRD, a hand-edited object, a unit test)
and can say exactly which field is wrong. tests/unit/test_crd_schema.py keeps the two in step.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from dmlt_operator.core.spec import SpecError, SpecModel, check_name, field_path, repeated
from pydantic import Field, ValidationError, field_validator, model_validator

MAX_JOB_NAME = 50
"""`<job>-<rank>` must be a DNS label (63 chars) and `<job>` a Service name (DNS-1035)."""
GPU_RESOURCE = "nvidia.com/gpu"
BACKENDS = ("auto", "gloo", "nccl")
CLEAN_POD_POLICIES = ("All", "Running", "None")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


Quantity = int | float | str


class ResourcesSpec(SpecModel):
    """Container resources, as in a Pod (quantities are strings or numbers)."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)

    def gpus(self) -> int:
        raw = self.limits.get(GPU_RESOURCE, self.requests.get(GPU_RESOURCE, 0))
        try:
            return int(raw)
        except (TypeError, ValueError):
            return 0


Width = Annotated[int, Field(ge=1, le=65536)]


class TrainerSpec(SpecModel):
    """The trainer's own settings; each becomes a dmlt-train flag."""

    dataset: str = "synthetic"
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


class EnvVar(SpecModel):
    """One container environment variable (value or valueFrom, as in a Pod)."""

    name: Annotated[str, Field(min_length=1, max_length=253)]
    value: str | None = None
    value_from: dict[str, Any] | None = None


class ClaimRef(SpecModel):
    claim_name: Annotated[str, Field(min_length=1, max_length=253)]


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
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: Annotated[list[dict[str, Any]], Field(max_length=64)] = Field(default_factory=list)
    service_account_name: Annotated[str, Field(max_length=253)] | None = None

    @field_validator("env")
    @classmethod
    def _unique_env(cls, env: list[EnvVar]) -> list[EnvVar]:
        if dupes := repeated([e.name for e in env]):
            raise ValueError(f"duplicate env names: {dupes}")
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
