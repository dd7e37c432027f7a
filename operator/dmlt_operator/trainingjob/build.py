"""Pure builders: a TrainingJob's spec → its headless Service and one Pod per rank.

Names are deterministic (`<job>` for the Service, `<job>-<rank>` for Pods) so a handler that
runs twice creates nothing twice: the second create gets 409 AlreadyExists. Each Pod carries
`hostname`/`subdomain`, which gives it the stable DNS name `<job>-<rank>.<job>` through the
headless Service; rank 0's name is every rank's static rendezvous endpoint.
"""

from __future__ import annotations

from typing import Any

from dmlt_contract import (
    ATTEMPT_ENV,
    JOB_NAME_ENV,
    NODE_RANK_ENV,
    PROGRESS_CA_ENV,
    PROGRESS_TOKEN_FILE_ENV,
    PROGRESS_URL_ENV,
    progress_audience,
    progress_path,
)
from dmlt_operator.core.config import OperatorConfig, ProgressConfig
from dmlt_operator.core.objects import (
    JOB_KIND,
    LABEL_COMPONENT,
    ObjectRef,
    managed_labels,
    owner_reference,
)
from dmlt_operator.trainingjob.spec import TrainingJobSpec

LABEL_JOB = "dmlt.io/job-name"
LABEL_RANK = "dmlt.io/rank"
LABEL_ATTEMPT = "dmlt.io/attempt"
"""The gang's generation: bumped on every gang restart and on suspend."""

TRAINER_CONTAINER = "trainer"
CHECKPOINT_DIR = "/var/lib/dmlt/checkpoints"
DATA_CACHE_DIR = "/tmp/dmlt-cache"
RUN_AS_UID = 10001
PROGRESS_TOKEN_VOLUME = "dmlt-progress-token"
PROGRESS_TOKEN_DIR = "/var/run/secrets/dmlt.io/progress"
PROGRESS_TOKEN_FILE = f"{PROGRESS_TOKEN_DIR}/token"


class JobRef(ObjectRef):
    """The identity of a TrainingJob object: enough to name and own its children."""

    __slots__ = ()


def service_name(job: str) -> str:
    return job


def pod_name(job: str, rank: int) -> str:
    return f"{job}-{rank}"


def master_addr(job: str) -> str:
    """Rank 0's stable DNS name, resolvable in the job's namespace via the headless Service."""
    return f"{pod_name(job, 0)}.{service_name(job)}"


def job_labels(job: str) -> dict[str, str]:
    """Labels on every child of a job; also the Service's selector."""
    return managed_labels(LABEL_JOB, job)


def rank_labels(job: str, rank: int, attempt: int) -> dict[str, str]:
    return {
        **job_labels(job),
        LABEL_COMPONENT: "trainer",
        LABEL_RANK: str(rank),
        LABEL_ATTEMPT: str(attempt),
    }


def build_service(job: JobRef, spec: TrainingJobSpec) -> dict[str, Any]:
    """Headless Service that publishes every rank's DNS record, ready or not."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(job.name),
            "namespace": job.namespace,
            "labels": job_labels(job.name),
            "ownerReferences": [owner_reference(job, JOB_KIND)],
        },
        "spec": {
            "clusterIP": "None",
            # Ranks resolve rank 0 before any Pod is Ready (they have no readiness probe).
            "publishNotReadyAddresses": True,
            "selector": job_labels(job.name),
            "ports": [
                {
                    "name": "rendezvous",
                    "port": spec.rendezvous.port,
                    "targetPort": spec.rendezvous.port,
                    "protocol": "TCP",
                }
            ],
        },
    }


def format_number(value: Any) -> str:
    """A flag or message value: real numbers in their shortest exact form, the rest as written."""
    return repr(float(value)) if isinstance(value, float) else str(value)


def trainer_args(job: str, spec: TrainingJobSpec) -> list[str]:
    """dmlt-train flags for the spec's trainer block (then the user's extraArgs, verbatim)."""
    t = spec.trainer
    args = [
        "--run-name", job,
        "--dataset", t.dataset,
        "--epochs", str(t.epochs),
        "--batch-size", str(t.batch_size),
        "--lr", format_number(t.lr),
        "--hidden-dims", ",".join(str(d) for d in t.hidden_dims),
        "--dropout", format_number(t.dropout),
        "--weight-decay", format_number(t.weight_decay),
        "--seed", str(t.seed),
        "--early-stopping-patience", str(t.early_stopping_patience),
        "--checkpoint-dir", CHECKPOINT_DIR,
        "--cache-dir", DATA_CACHE_DIR,
        "--backend", spec.effective_backend,
        "--timeout-s", str(spec.rendezvous.timeout_seconds),
        "--experiment", spec.mlflow.experiment,
    ]  # fmt: skip
    if t.n_samples is not None:
        args += ["--n-samples", str(t.n_samples)]
    if t.data_path is not None:
        args += ["--data-path", t.data_path]
    if t.target is not None:
        args += ["--target-column", t.target]
    return args + list(t.extra_args)


def torchrun_command(job: str, spec: TrainingJobSpec, rank: int, attempt: int) -> list[str]:
    """Static rendezvous: every rank knows nnodes, its node rank and rank 0's address.

    Rank 0's agent hosts the TCPStore; the others retry connecting (DNS failures included)
    for `rendezvous.timeoutSeconds`, so a rank 0 that is scheduled or pulled last does not
    fail them. torchrun never restarts workers itself (--max-restarts=0): a failed rank fails
    its Pod and the operator restarts the whole gang.
    """
    return [
        "python", "-m", "torch.distributed.run",
        f"--nnodes={spec.replicas}",
        f"--node-rank={rank}",
        f"--nproc-per-node={spec.procs_per_node}",
        f"--master-addr={master_addr(job)}",
        f"--master-port={spec.rendezvous.port}",
        "--max-restarts=0",
        f"--rdzv-id={job}-{attempt}",
        f"--rdzv-conf=timeout={spec.rendezvous.timeout_seconds}",
        "-m", "dmlt_trainer.cli",
        *trainer_args(job, spec),
    ]  # fmt: skip


def _env(
    job: JobRef, spec: TrainingJobSpec, rank: int, attempt: int, cfg: OperatorConfig
) -> list[dict[str, Any]]:
    ours: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
        {"name": JOB_NAME_ENV, "value": job.name},
        {"name": NODE_RANK_ENV, "value": str(rank)},
        {"name": ATTEMPT_ENV, "value": str(attempt)},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    tracking_uri = spec.mlflow.tracking_uri or cfg.default_tracking_uri
    if tracking_uri:
        ours.append({"name": "MLFLOW_TRACKING_URI", "value": tracking_uri})
    if cfg.gloo_socket_ifname:
        ours.append({"name": "GLOO_SOCKET_IFNAME", "value": cfg.gloo_socket_ifname})
    if cfg.progress.enabled and rank == 0:
        ours += progress_env(job, cfg.progress)
    user = [e.model_dump(by_alias=True, exclude_none=True) for e in spec.env]
    overridden = {e["name"] for e in user}
    return [e for e in ours if e["name"] not in overridden] + user


def progress_env(job: JobRef, progress: ProgressConfig) -> list[dict[str, Any]]:
    """Where rank 0 pushes its epoch events, with which token, trusting which CA."""
    return [
        {"name": PROGRESS_URL_ENV, "value": progress.url + progress_path(job.namespace, job.name, job.uid)},
        {"name": PROGRESS_TOKEN_FILE_ENV, "value": PROGRESS_TOKEN_FILE},
        {"name": PROGRESS_CA_ENV, "value": progress.ca_pem},
    ]


def progress_token_volume(job: JobRef, progress: ProgressConfig) -> dict[str, Any]:
    """A projected token for this job instance's audience only: the apiserver refuses it for
    its own API, so the trainer still holds no credential for the cluster."""
    token = {
        "audience": progress_audience(job.namespace, job.name, job.uid),
        "expirationSeconds": progress.token_expiration_s,
        "path": PROGRESS_TOKEN_FILE.rsplit("/", 1)[1],
    }
    return {"name": PROGRESS_TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}}


def _resources(spec: TrainingJobSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.resources.requests:
        out["requests"] = {k: v for k, v in spec.resources.requests.items()}
    if spec.resources.limits:
        out["limits"] = {k: v for k, v in spec.resources.limits.items()}
    return out


def _checkpoint_volume(spec: TrainingJobSpec, rank: int) -> dict[str, Any]:
    """Only rank 0 reads and writes checkpoints, so only rank 0 mounts the claim.

    That also keeps a ReadWriteOnce claim usable when ranks land on different nodes.
    """
    claim = spec.checkpoint.persistent_volume_claim
    if claim is not None and rank == 0:
        return {"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim.claim_name}}
    empty: dict[str, Any] = {}
    if spec.checkpoint.empty_dir is not None and spec.checkpoint.empty_dir.size_limit is not None:
        empty["sizeLimit"] = spec.checkpoint.empty_dir.size_limit
    return {"name": "checkpoints", "emptyDir": empty}


def build_rank_pod(
    job: JobRef, spec: TrainingJobSpec, rank: int, attempt: int, cfg: OperatorConfig
) -> dict[str, Any]:
    """The Pod for one node rank of one gang attempt."""
    if not 0 <= rank < spec.replicas:
        raise ValueError(f"rank {rank} outside 0..{spec.replicas - 1}")
    mounts = [
        {"name": "checkpoints", "mountPath": CHECKPOINT_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        _checkpoint_volume(spec, rank),
        {"name": "tmp", "emptyDir": {}},
    ]
    if cfg.progress.enabled and rank == 0:
        # Only rank 0 reports progress, so only rank 0 gets the token.
        mounts.append({"name": PROGRESS_TOKEN_VOLUME, "mountPath": PROGRESS_TOKEN_DIR, "readOnly": True})
        volumes.append(progress_token_volume(job, cfg.progress))
    if spec.effective_backend == "nccl":
        # NCCL and DataLoader workers use shared memory; a container's /dev/shm is 64 MiB.
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": torchrun_command(job.name, spec, rank, attempt),
        "env": _env(job, spec, rank, attempt, cfg),
        "ports": [{"name": "rendezvous", "containerPort": spec.rendezvous.port, "protocol": "TCP"}],
        "volumeMounts": mounts,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_UID,
            "runAsGroup": RUN_AS_UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": cfg.read_only_root_fs,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "hostname": pod_name(job.name, rank),
        "subdomain": service_name(job.name),
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        # The trainer never talks to the Kubernetes API (rank 0's progress token, above, is
        # for the operator's receiver only: its audience is not the apiserver's).
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": cfg.termination_grace_period_s,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_UID,
            "runAsGroup": RUN_AS_UID,
            "fsGroup": RUN_AS_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(job.name, rank),
            "namespace": job.namespace,
            "labels": rank_labels(job.name, rank, attempt),
            "annotations": {"dmlt.io/world-size": str(spec.world_size)},
            "ownerReferences": [owner_reference(job, JOB_KIND)],
        },
        "spec": pod_spec,
    }
