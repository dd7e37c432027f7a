"""`Client`: submit, find and delete TrainingJobs and TuningStudies, in a cluster or locally.

    from dmlt import Client
    job = Client().train({"dataset": "breast_cancer", "epochs": 5}, replicas=2)
    job.wait(); print(job.metrics(), job.mlflow_run().url)

Specs are built and validated with the operator's own models before anything is sent: a bad
one raises InvalidSpec with the message the operator (and, for what it can express, the CRD's
admission) would give.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dmlt import specs
from dmlt import upstream as up
from dmlt.errors import InvalidSpec, NotFound
from dmlt.jobs import Job, Study
from dmlt.kube import Kube, connect
from dmlt.local import LocalJob, LocalPaths, LocalStudy
from dmlt.observe import JobState, StudyState

TrainerConfig = up.RunConfig | Mapping[str, Any] | str | os.PathLike | None
"""The trainer's settings: its RunConfig, a mapping like its config file (flat or nested by
section), or the path of such a YAML file."""
Space = Sequence[Mapping[str, Any]] | Mapping[str, Any] | str | os.PathLike
"""A search space: a list of parameters (as in a TuningStudy), a mapping with `parameters`
(and optionally objective, algorithm, pruner, maxTrials, ...), or a YAML file of either."""
KINDS = {
    "trainingjob": up.KIND,
    "trainingjobs": up.KIND,
    "tj": up.KIND,
    "job": up.KIND,
    "jobs": up.KIND,
    "tuningstudy": up.STUDY_KIND,
    "tuningstudies": up.STUDY_KIND,
    "ts": up.STUDY_KIND,
    "study": up.STUDY_KIND,
    "studies": up.STUDY_KIND,
}


def trainer_config(config: TrainerConfig = None, **overrides: Any) -> up.RunConfig:
    """The trainer's RunConfig from any TrainerConfig form, with field overrides."""
    try:
        if isinstance(config, up.RunConfig):
            values: dict[str, Any] = up.trainer_values(config)
        elif isinstance(config, str | os.PathLike):
            return up.trainer_parse_argv(["--config", str(config), *_override_flags(overrides)])
        else:
            values = dict(config or {})
        return up.trainer_parse_argv(_override_flags({**_flatten(values), **overrides}))
    except up.ConfigError as exc:
        raise InvalidSpec(str(exc)) from None


def _flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _override_flags(values: Mapping[str, Any]) -> list[str]:
    out = []
    for key, value in values.items():
        if value is None:
            continue
        text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        out += ["--set", f"{key}={text}"]
    return out


def resolve_kind(kind: str) -> str:
    try:
        return KINDS[kind.lower()]
    except KeyError:
        raise InvalidSpec(f"unknown kind {kind!r}: one of trainingjob (tj), tuningstudy (ts)") from None


class Client:
    """dmlt in one object: the cluster of the current kubeconfig context, or this machine.

    Connecting is lazy: a local-only user never needs a kubeconfig."""

    def __init__(
        self,
        namespace: str | None = None,
        *,
        context: str | None = None,
        image: str | None = None,
        check_operator: bool = True,
    ) -> None:
        self._namespace = namespace
        self._context = context
        self._kube: Kube | None = None
        self.image = image or os.environ.get("DMLT_TRAINER_IMAGE") or specs.DEFAULT_IMAGE
        self.check_operator = check_operator

    # ---- connection

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = Kube(connect(self._context))
        return self._kube

    @property
    def namespace(self) -> str:
        return self._namespace or self.kube.default_namespace

    def _preflight(self, kind: str, namespace: str) -> None:
        self.kube.check_crd(kind)
        if self.check_operator:
            self.kube.check_operator(namespace)

    # ---- submitting

    def _cluster(
        self,
        replicas: int | None,
        procs_per_node: int | None,
        image: str | None,
        cpu: str | None,
        memory: str | None,
        gpus: int,
        queue: str | None,
    ) -> specs.ClusterOptions:
        return specs.ClusterOptions(
            replicas=replicas,
            procs_per_node=procs_per_node,
            image=image or self.image,
            cpu=cpu,
            memory=memory,
            gpus=gpus,
            queue=queue,
        )

    def train(
        self,
        config: TrainerConfig = None,
        *,
        replicas: int | None = None,
        procs_per_node: int | None = None,
        image: str | None = None,
        cpu: str | None = None,
        memory: str | None = None,
        gpus: int = 0,
        queue: str | None = None,
        name: str | None = None,
        namespace: str | None = None,
        local: bool = False,
        local_dir: str | os.PathLike = ".",
        **trainer: Any,
    ) -> Job | LocalJob:
        """Start a training run; returns at once with a handle (call `.wait()` on it).

        `config` and `**trainer` are the trainer's settings (the dmlt-train flags by their
        field names: `epochs=5, dataset="breast_cancer"`). With `local=True` the same spec runs
        on this machine (one process, or local ranks when replicas x procs_per_node > 1).
        """
        cfg = trainer_config(config, **trainer)
        cluster = self._cluster(replicas, procs_per_node, image, cpu, memory, gpus, queue)
        spec = specs.build_job_spec(cfg, cluster, local=local)
        job_name = specs.job_name(name, cfg)
        specs.check_name(up.KIND, job_name)
        if local:
            return LocalJob(job_name, spec, LocalPaths.default(local_dir, cfg)).start()
        return self.submit(up.KIND, job_name, spec, namespace=namespace, queue=queue)

    def submit(
        self,
        kind: str,
        name: str,
        spec: up.TrainingJobSpec | up.TuningStudySpec,
        *,
        namespace: str | None = None,
        queue: str | None = None,
    ) -> Job | Study:
        """Create a TrainingJob or TuningStudy from a validated spec, after checking that the
        cluster has the CRD and an operator serving the namespace."""
        ns = namespace or self.namespace
        self._preflight(kind, ns)
        self.kube.create(kind, specs.manifest(kind, name, ns, specs.spec_to_dict(spec), queue))
        return Job(self.kube, ns, name) if kind == up.KIND else Study(self.kube, ns, name)

    def tune(
        self,
        space: Space,
        config: TrainerConfig = None,
        *,
        options: specs.StudyOptions | None = None,
        replicas: int | None = None,
        procs_per_node: int | None = None,
        image: str | None = None,
        cpu: str | None = None,
        memory: str | None = None,
        gpus: int = 0,
        queue: str | None = None,
        name: str | None = None,
        namespace: str | None = None,
        local: bool = False,
        storage: str = up.DEFAULT_STORAGE,
        local_dir: str | os.PathLike = ".",
        **trainer: Any,
    ) -> Study | LocalStudy:
        """Start a search over `space`; each trial is a TrainingJob of these trainer settings.

        The trainer's hp settings (`objective`, `direction`, `pruner`, `sampler`, `hp_trials`,
        `parallel_trials`, ...) set the study's; `options` the rest. With `local=True` the study
        runs here on SQLite (`storage`), one trial at a time, while it is waited on."""
        cfg = trainer_config(config, **trainer)
        cluster = self._cluster(replicas, procs_per_node, image, cpu, memory, gpus, queue)
        spec = specs.build_study_spec(cfg, cluster, load_space(space), options or specs.StudyOptions(), local)
        study_name = specs.job_name(name, cfg, prefix="tune")
        specs.check_name(up.STUDY_KIND, study_name)
        if local:
            return LocalStudy(study_name, spec, storage, LocalPaths.default(local_dir, cfg))
        return self.submit(up.STUDY_KIND, study_name, spec, namespace=namespace, queue=queue)

    # ---- finding

    def job(self, name: str, namespace: str | None = None) -> Job:
        """A handle on an existing TrainingJob (NotFound if there is none)."""
        ns = namespace or self.namespace
        self.kube.get(up.KIND, ns, name)
        return Job(self.kube, ns, name)

    def study(self, name: str, namespace: str | None = None) -> Study:
        ns = namespace or self.namespace
        self.kube.get(up.STUDY_KIND, ns, name)
        return Study(self.kube, ns, name)

    def find(self, name: str, kind: str | None = None, namespace: str | None = None) -> Job | Study:
        """A job or a study by name; with both present the kind must be given."""
        ns = namespace or self.namespace
        kinds = [resolve_kind(kind)] if kind else [up.KIND, up.STUDY_KIND]
        found = [k for k in kinds if self.kube.find(k, ns, name) is not None]
        if not found:
            what = " or ".join(kinds)
            raise NotFound(f"no {what} named {name!r} in namespace {ns!r}")
        if len(found) > 1:
            raise InvalidSpec(
                f"both a TrainingJob and a TuningStudy are named {name!r}: say which (tj/{name} or ts/{name})"
            )
        return Job(self.kube, ns, name) if found[0] == up.KIND else Study(self.kube, ns, name)

    def list(
        self, kind: str | None = None, namespace: str | None = None, *, all_namespaces: bool = False
    ) -> list[JobState | StudyState]:
        """Jobs and/or studies with their state (`kind`: tj, ts or None for both)."""
        ns = None if all_namespaces else (namespace or self.namespace)
        kinds = [resolve_kind(kind)] if kind else [up.KIND, up.STUDY_KIND]
        out: list[JobState | StudyState] = []
        for k in kinds:
            for obj in self.kube.list(k, ns):
                out.append(JobState.from_object(obj) if k == up.KIND else StudyState.from_objects(obj))
        return out

    def delete(self, name: str, kind: str | None = None, namespace: str | None = None) -> str:
        """Delete a job or a study; returns its kind."""
        target = self.find(name, kind, namespace)
        target.delete()
        return target.kind


def load_space(space: Space) -> dict[str, Any]:
    """Any Space form → a mapping with `parameters` (and other study fields)."""
    if isinstance(space, str | os.PathLike):
        return specs.load_space(str(Path(space)))
    if isinstance(space, Mapping):
        return dict(space)
    return {"parameters": [dict(p) for p in space]}
