"""Pure builders: trainer settings + cluster options → a TrainingJob or TuningStudy.

Nothing here talks to a cluster. The specs are the operator's own pydantic models
(`upstream`), so whatever the operator would refuse is refused here first, with its message.
The trainer's settings come as its own RunConfig (its flags, its config file, its defaults):
the fields the TrainingJob's `trainer` block has are set from it, every other setting that
differs from the trainer's default becomes an `extraArgs` flag, so the Pods run exactly what
`dmlt-train` with the same flags runs.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from dmlt import upstream as up
from dmlt.errors import InvalidSpec

DEFAULT_IMAGE = "dmlt-trainer:dev"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
"""Kueue's LocalQueue label: the queue a workload is submitted to."""

# trainer field → the TrainingJob's trainer field (camelCase, as in the CRD).
TRAINER_FIELDS = {
    "dataset": "dataset",
    "data_path": "dataPath",
    "target": "target",
    "n_samples": "nSamples",
    "epochs": "epochs",
    "batch_size": "batchSize",
    "lr": "lr",
    "hidden_dims": "hiddenDims",
    "dropout": "dropout",
    "weight_decay": "weightDecay",
    "seed": "seed",
    "early_stopping_patience": "earlyStoppingPatience",
}
# Trainer settings the cluster decides (the operator passes them to every rank), or that
# belong to studies: a user who sets them gets told where they went instead.
MANAGED = {
    "checkpoint_dir": "the operator mounts the checkpoint volume (spec.checkpoint)",
    "cache_dir": "the operator sets the data cache inside the Pod",
    "study_name": "trials of a study are run by `dmlt tune`",
    "trial_number": "trials of a study are run by `dmlt tune`",
    "storage": "trials of a study are run by `dmlt tune`",
    "parent_run_id": "trials of a study are run by `dmlt tune`",
    "result_file": "a file inside the Pod is lost with it; read `dmlt describe` or job.metrics()",
}
LOCAL_ONLY = ("checkpoint_dir", "cache_dir", "result_file")
"""Settings a local run takes from the trainer's flags (its own paths); a cluster run refuses them."""
# Settings mapped onto the spec itself rather than passed as flags.
MAPPED = {"mode", "run_name", "world_size", "backend", "timeout_s", "experiment", "tracking_uri"}
# Sections that only mean something to other modes (hp_search, benchmark).
OTHER_MODES = ("hpo", "benchmark")
QUANTITY_RE = re.compile(r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterOptions:
    """Where and how a job runs on the cluster (the `dmlt train` cluster flags)."""

    replicas: int | None = None
    """Pods (node ranks); default 1."""
    procs_per_node: int | None = None
    """Processes (ranks) per Pod; default 1, or the trainer's --world-size in ddp mode."""
    image: str = DEFAULT_IMAGE
    """The trainer image."""
    cpu: str | None = None
    """CPU request of each Pod (a Kubernetes quantity: 2, 500m)."""
    memory: str | None = None
    """Memory request and limit of each Pod (a Kubernetes quantity: 2Gi)."""
    gpus: int = 0
    """GPUs per Pod (limits nvidia.com/gpu)."""
    queue: str | None = None
    """Kueue LocalQueue to submit to (label kueue.x-k8s.io/queue-name)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment variables of the trainer container."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StudyOptions:
    """Study-wide settings of `dmlt tune` beyond the trainer's own hp flags."""

    algorithm: str | None = None
    """tpe, random, grid or cmaes; default: the trainer's --sampler."""
    max_trials: int | None = None
    """Default: the trainer's --hp-trials."""
    parallelism: int | None = None
    """Default: the trainer's --parallel-trials."""
    max_failed_trials: int | None = None
    registered_model: str | None = None
    storage_secret: str | None = None
    """`NAME` or `NAME:KEY` of the Secret holding the Optuna storage URL."""
    algorithm_seed: int | None = None


def check_quantity(flag: str, value: str | None) -> None:
    """Kubernetes quantity syntax (what the apiserver would refuse in the Pod)."""
    if value is not None and not QUANTITY_RE.match(str(value).strip()):
        raise InvalidSpec(
            f"{flag} {value!r} is not a Kubernetes quantity (e.g. 2, 500m, 512Mi, 4Gi; not 4GB or 3gi)"
        )


def job_name(explicit: str | None, cfg: up.RunConfig, prefix: str = "train") -> str:
    """The object's name: --name, else the trainer's --run-name made a DNS label, else generated."""
    default_run = up.trainer_config().run_name
    if explicit:
        return explicit
    if cfg.run_name != default_run:
        return re.sub(r"[^a-z0-9-]+", "-", cfg.run_name.lower()).strip("-")
    return f"{prefix}-{secrets.token_hex(3)}"


def check_name(kind: str, name: str) -> None:
    check = up.check_job_name if kind == up.KIND else up.check_study_name
    try:
        check(name)
    except up.SpecError as exc:
        raise InvalidSpec(str(exc)) from None


def _flag_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def extra_args(cfg: up.RunConfig, skip: Sequence[str] = ()) -> list[str]:
    """Flags for every trainer setting that differs from its default and has no spec field."""
    flags = up.trainer_flag_names()
    defaults = up.trainer_values(up.trainer_config())
    values = up.trainer_values(cfg)
    sections = {name for sec in OTHER_MODES for name in up.trainer_section_fields(sec)}
    out: list[str] = []
    for name, value in values.items():
        if name in TRAINER_FIELDS or name in MAPPED or name in sections or name in skip:
            continue
        if value == defaults.get(name):
            continue
        if name in MANAGED:
            flag = flags.get(name, (name, False))[0]
            raise InvalidSpec(f"{flag} cannot be set for a cluster run: {MANAGED[name]}")
        flag, switch = flags[name]
        if switch:
            out.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            out += [flag, _flag_value(value)]
    return out


def _world(cfg: up.RunConfig, cluster: ClusterOptions) -> tuple[int, int]:
    if cfg.mode in ("hp_search", "benchmark"):
        raise InvalidSpec(f"--mode {cfg.mode} is not a training job: use `dmlt tune` for a search")
    replicas = 1 if cluster.replicas is None else cluster.replicas
    procs = cluster.procs_per_node
    if procs is None:
        procs = cfg.dist.world_size if cfg.mode == "ddp" and cluster.replicas is None else 1
    return replicas, procs


def _resources(cluster: ClusterOptions) -> dict[str, Any]:
    check_quantity("--cpu", cluster.cpu)
    check_quantity("--memory", cluster.memory)
    if cluster.gpus < 0:
        raise InvalidSpec(f"--gpus must be >= 0; got {cluster.gpus}")
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if cluster.cpu:
        requests["cpu"] = cluster.cpu
    if cluster.memory:
        requests["memory"] = limits["memory"] = cluster.memory
    if cluster.gpus:
        limits[up.GPU_RESOURCE] = cluster.gpus
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def job_spec_dict(cfg: up.RunConfig, cluster: ClusterOptions, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The TrainingJob spec (camelCase, as written in YAML) for these settings, unvalidated."""
    replicas, procs = _world(cfg, cluster)
    values = up.trainer_values(cfg)
    defaults = up.trainer_values(up.trainer_config())
    trainer = {camel: values[name] for name, camel in TRAINER_FIELDS.items() if values[name] is not None}
    args = extra_args(cfg, skip)
    if args:
        trainer["extraArgs"] = args
    spec: dict[str, Any] = {
        "image": cluster.image,
        "replicas": replicas,
        "procsPerNode": procs,
        "backend": cfg.dist.backend,
        "trainer": trainer,
        "mlflow": {"experiment": cfg.tracking.experiment},
    }
    if cfg.tracking.tracking_uri:
        spec["mlflow"]["trackingUri"] = cfg.tracking.tracking_uri
    if values["timeout_s"] != defaults["timeout_s"]:
        spec["rendezvous"] = {"timeoutSeconds": values["timeout_s"]}
    resources = _resources(cluster)
    if resources:
        spec["resources"] = resources
    if cluster.env:
        spec["env"] = [{"name": k, "value": str(v)} for k, v in cluster.env.items()]
    return spec


def _validated(parse: Any, raw: Mapping[str, Any]) -> Any:
    """The operator's model of the spec; InvalidSpec with the operator's message otherwise."""
    try:
        return parse(dict(raw))
    except up.SpecError as exc:
        raise InvalidSpec(str(exc)) from None


def validate_job_spec(raw: Mapping[str, Any]) -> up.TrainingJobSpec:
    return _validated(up.parse_spec, raw)


def build_job_spec(cfg: up.RunConfig, cluster: ClusterOptions, local: bool = False) -> up.TrainingJobSpec:
    """The validated TrainingJob spec; `local` lets this machine's paths through (LocalPaths)."""
    return validate_job_spec(job_spec_dict(cfg, cluster, skip=LOCAL_ONLY if local else ()))


def spec_to_dict(spec: up.TrainingJobSpec | up.TuningStudySpec) -> dict[str, Any]:
    """A validated spec as the CR's `spec`: camelCase, JSON types, defaults left out (the CRD
    applies the same ones)."""
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)


def manifest(
    kind: str, name: str, namespace: str, spec: Mapping[str, Any], queue: str | None = None
) -> dict[str, Any]:
    """The custom resource to create."""
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/created-by": "dmlt-cli"},
    }
    if queue:
        metadata["labels"][QUEUE_LABEL] = queue
    return {"apiVersion": up.API_VERSION, "kind": kind, "metadata": metadata, "spec": dict(spec)}


# --------------------------------------------------------------------------- search spaces

_TYPES = {"float": "float", "int": "int", "choice": "categorical", "categorical": "categorical"}


def _camel(name: str) -> str:
    head, *rest = name.strip().split("_")
    return head + "".join(part.title() for part in rest)


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _choice(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def parse_param(text: str) -> dict[str, Any]:
    """`--param` → one search-space parameter, as in a TuningStudy's `parameters`.

    NAME=float:MIN:MAX[:log][:step=S] · NAME=int:MIN:MAX[:log][:step=S] · NAME=choice:A,B,C
    """
    name, sep, rest = text.partition("=")
    kind, _, body = rest.partition(":")
    if not sep or not name.strip() or kind not in _TYPES or not body:
        raise InvalidSpec(
            f"--param {text!r}: write NAME=float:MIN:MAX[:log][:step=S], NAME=int:MIN:MAX[:step=S] "
            "or NAME=choice:A,B,C"
        )
    param: dict[str, Any] = {"name": _camel(name), "type": _TYPES[kind]}
    if param["type"] == "categorical":
        param["choices"] = [_choice(c.strip()) for c in body.split(",") if c.strip()]
        return param
    parts = body.split(":")
    try:
        param["min"], param["max"] = _number(parts[0]), _number(parts[1])
        for extra in parts[2:]:
            if extra == "log":
                param["log"] = True
            elif extra.startswith("step="):
                param["step"] = _number(extra[5:])
            else:
                raise ValueError(extra)
    except (IndexError, ValueError):
        raise InvalidSpec(f"--param {text!r}: {kind} parameters are {kind}:MIN:MAX[:log][:step=S]") from None
    return param


STUDY_FILE_KEYS = {
    "parameters",
    "objective",
    "algorithm",
    "pruner",
    "maxTrials",
    "parallelism",
    "maxFailedTrials",
    "mlflow",
    "storage",
}


def load_space(path: str) -> dict[str, Any]:
    """A search-space file: a list of parameters, or a mapping with `parameters` and any other
    study fields (objective, algorithm, pruner, maxTrials, ...), or a whole TuningStudy."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise InvalidSpec(f"search space file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidSpec(f"search space file {path} is not valid YAML: {exc}") from None
    if isinstance(data, list):
        return {"parameters": data}
    if isinstance(data, dict) and data.get("kind") == up.STUDY_KIND:
        data = data.get("spec") or {}
    if not isinstance(data, dict) or "parameters" not in data:
        raise InvalidSpec(
            f"search space file {path}: expected a list of parameters or a mapping with `parameters`"
        )
    unknown = sorted(set(data) - STUDY_FILE_KEYS - {"trialTemplate"})
    if unknown:
        raise InvalidSpec(f"search space file {path}: unknown keys {', '.join(unknown)}")
    return data


def _hp_settings(cfg: up.RunConfig, options: StudyOptions) -> dict[str, Any]:
    """Study settings from the trainer's own hp flags, then the tune-only flags."""
    hpo = cfg.hpo
    out: dict[str, Any] = {
        "objective": {"metric": hpo.objective, "direction": hpo.direction},
        "algorithm": {"name": options.algorithm or hpo.sampler},
        "pruner": {
            "name": hpo.pruner,
            "startupTrials": hpo.pruner_startup_trials,
            "warmupSteps": hpo.pruner_warmup_steps,
            "percentile": hpo.pruner_percentile,
            "minResource": hpo.pruner_min_resource,
            "reductionFactor": hpo.pruner_reduction_factor,
        },
        "maxTrials": options.max_trials or hpo.hp_trials,
        "parallelism": options.parallelism or hpo.parallel_trials,
    }
    if options.algorithm_seed is not None:
        out["algorithm"]["seed"] = options.algorithm_seed
    if options.max_failed_trials is not None:
        out["maxFailedTrials"] = options.max_failed_trials
    if options.registered_model:
        out["mlflow"] = {"registeredModel": options.registered_model}
    if options.storage_secret:
        secret, _, key = options.storage_secret.partition(":")
        out["storage"] = {"secretRef": {"name": secret, **({"key": key} if key else {})}}
    return out


def study_spec_dict(
    cfg: up.RunConfig,
    cluster: ClusterOptions,
    space: Mapping[str, Any],
    options: StudyOptions = StudyOptions(),
    skip: Sequence[str] = (),
) -> dict[str, Any]:
    """The TuningStudy spec: hp flags, then the space file's study fields, then the space; its
    trial template is `job_spec_dict`'s (`skip` as there)."""
    template = job_spec_dict(cfg, cluster, skip)
    if cfg.hpo.trial_epochs:
        template["trainer"]["epochs"] = cfg.hpo.trial_epochs
    spec = _hp_settings(cfg, options)
    for key, value in space.items():
        if isinstance(value, Mapping) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    spec["trialTemplate"] = {**template, **dict(space.get("trialTemplate") or {})}
    return spec


def validate_study_spec(raw: Mapping[str, Any]) -> up.TuningStudySpec:
    return _validated(up.parse_study_spec, raw)


def build_study_spec(
    cfg: up.RunConfig,
    cluster: ClusterOptions,
    space: Mapping[str, Any],
    options: StudyOptions = StudyOptions(),
    local: bool = False,
) -> up.TuningStudySpec:
    if not space.get("parameters"):
        raise InvalidSpec("a study needs a search space: --space FILE or at least one --param")
    return validate_study_spec(
        study_spec_dict(cfg, cluster, space, options, skip=LOCAL_ONLY if local else ())
    )
