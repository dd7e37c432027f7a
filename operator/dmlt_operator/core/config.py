"""Operator settings: read once from the environment at start-up, then passed via kopf.Memo."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _number(env: Mapping[str, str], key: str, default: float, minimum: float, kind: type = float) -> Any:
    """The variable as a `kind` (int or float) of at least `minimum`; `default` when unset."""
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise ValueError(f"{key} must be {noun}; got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{key} must be >= {minimum}; got {value}")
    return value


def _int(env: Mapping[str, str], key: str, default: int, minimum: int = 0) -> int:
    return _number(env, key, default, minimum, int)


def _float(env: Mapping[str, str], key: str, default: float, minimum: float) -> float:
    return _number(env, key, default, minimum, float)


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{key} must be true or false; got {raw!r}")


@dataclass(kw_only=True, slots=True, frozen=True)
class LeaderElectionConfig:
    """Two or more replicas, one active: a coordination.k8s.io Lease decides which runs kopf
    (docs/operator.md, "Two replicas, one active")."""

    enabled: bool = False
    """Elect a leader through the Lease before reconciling; off runs kopf at once, alone
    [DMLT_LEADER_ELECTION]."""
    lease_name: str = "dmlt-operator"
    """Name of the Lease [DMLT_LEASE_NAME]."""
    lease_namespace: str = ""
    """Namespace of the Lease, the operator's own; the chart gives the Pod's
    [DMLT_LEASE_NAMESPACE]."""
    lease_duration_s: float = 9.0
    """How long a standby waits, after it last saw the Lease change, before it takes the Lease
    over [DMLT_LEASE_DURATION_SECONDS]."""
    renew_deadline_s: float = 6.0
    """The leader stops (exits) when it could not renew for this long; shorter than the lease
    duration, so it has stopped before a standby may take over
    [DMLT_LEASE_RENEW_DEADLINE_SECONDS]."""
    retry_period_s: float = 3.0
    """How often the leader renews; standbys watch the Lease and retry a failed watch this often
    [DMLT_LEASE_RETRY_PERIOD_SECONDS]."""

    def __post_init__(self) -> None:
        if not self.lease_duration_s > self.renew_deadline_s > self.retry_period_s > 0:
            raise ValueError(
                "leader election needs lease duration > renew deadline > retry period > 0; got "
                f"{self.lease_duration_s} > {self.renew_deadline_s} > {self.retry_period_s}"
            )
        if self.enabled and not (self.lease_name and self.lease_namespace):
            raise ValueError("leader election needs DMLT_LEASE_NAME and DMLT_LEASE_NAMESPACE")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LeaderElectionConfig:
        return cls(
            enabled=_bool(env, "DMLT_LEADER_ELECTION", False),
            lease_name=env.get("DMLT_LEASE_NAME", "").strip() or "dmlt-operator",
            lease_namespace=env.get("DMLT_LEASE_NAMESPACE", "").strip(),
            lease_duration_s=_float(env, "DMLT_LEASE_DURATION_SECONDS", 9.0, 1.0),
            renew_deadline_s=_float(env, "DMLT_LEASE_RENEW_DEADLINE_SECONDS", 6.0, 0.5),
            retry_period_s=_float(env, "DMLT_LEASE_RETRY_PERIOD_SECONDS", 3.0, 0.1),
        )


@dataclass(kw_only=True, slots=True, frozen=True)
class ProgressConfig:
    """The progress receiver (trainingjob/progress_server.py, docs/operator.md "Progress"). Off
    (no URL): the operator reads progress from rank 0's log instead, the old fallback."""

    url: str = ""
    """Base URL trainer Pods reach the receiver at, e.g. https://dmlt-progress.dmlt.svc:8443;
    empty disables the receiver [DMLT_PROGRESS_SERVICE_URL]."""
    port: int = 8443
    """Port the receiver listens on, on every replica [DMLT_PROGRESS_PORT]."""
    tls_dir: str = "/etc/dmlt/progress-tls"
    """Directory with tls.crt, tls.key and ca.crt (the chart's Secret) [DMLT_PROGRESS_TLS_DIR]."""
    ca_pem: str = ""
    """ca.crt of tls_dir, read at start: trainer Pods get it inline (DMLT_PROGRESS_CA)."""
    token_expiration_s: int = 3600
    """Lifetime of the projected token in trainer Pods (the kubelet renews it at 80 %)
    [DMLT_PROGRESS_TOKEN_EXPIRATION_SECONDS]."""

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    @property
    def cert_file(self) -> str:
        return os.path.join(self.tls_dir, "tls.crt")

    @property
    def key_file(self) -> str:
        return os.path.join(self.tls_dir, "tls.key")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProgressConfig:
        url = env.get("DMLT_PROGRESS_SERVICE_URL", "").strip().rstrip("/")
        tls_dir = env.get("DMLT_PROGRESS_TLS_DIR", "").strip() or "/etc/dmlt/progress-tls"
        ca_pem = ""
        if url:
            if not url.startswith("https://"):
                raise ValueError(f"DMLT_PROGRESS_SERVICE_URL must be an https:// URL; got {url!r}")
            try:
                with open(os.path.join(tls_dir, "ca.crt"), encoding="utf-8") as f:
                    ca_pem = f.read().strip()
            except OSError as exc:
                raise ValueError(f"the progress receiver needs {tls_dir}/ca.crt: {exc}") from None
        return cls(
            url=url,
            port=_int(env, "DMLT_PROGRESS_PORT", 8443, 1),
            tls_dir=tls_dir,
            ca_pem=ca_pem,
            # The kubelet requires at least 10 minutes.
            token_expiration_s=_int(env, "DMLT_PROGRESS_TOKEN_EXPIRATION_SECONDS", 3600, 600),
        )


@dataclass(kw_only=True, slots=True, frozen=True)
class OperatorConfig:
    """Settings of one operator process (environment variables in brackets)."""

    default_tracking_uri: str = ""
    """MLflow URI for jobs that set none; the chart points it at its own server
    [DMLT_DEFAULT_TRACKING_URI]."""
    reconcile_interval_s: float = 300.0
    """Safety-net resync: each TrainingJob is reconciled at least this often (jittered ±10 %)
    even when no event arrives; events of the job and its Pods wake it at once
    [DMLT_RECONCILE_INTERVAL_SECONDS]."""
    log_poll_s: float = 5.0
    """While rank 0 runs, its log tail is read for progress this often
    [DMLT_LOG_POLL_SECONDS]."""
    workers: int = 8
    """Reconcile workers: how many TrainingJobs are reconciled at once; kopf's thread pool gets
    4 more threads [DMLT_WORKERS]."""
    api_qps: float = 50.0
    """Client-side limit on the operator's mutating API calls per second (a token bucket, as
    client-go's) [DMLT_API_QPS]."""
    api_burst: int = 100
    """Burst of that token bucket [DMLT_API_BURST]."""
    log_tail_lines: int = 200
    """Lines of rank 0's log read per reconcile for progress, only without a progress receiver
    [DMLT_LOG_TAIL_LINES]."""
    log_limit_bytes: int = 256 * 1024
    """Upper bound on bytes of log read per request [DMLT_LOG_LIMIT_BYTES]."""
    gloo_socket_ifname: str = "eth0"
    """GLOO_SOCKET_IFNAME given to trainer Pods, empty to leave unset
    [DMLT_GLOO_SOCKET_IFNAME]."""
    termination_grace_period_s: int = 20
    """Grace period of trainer Pods: time to finish an atomic checkpoint write
    [DMLT_TERMINATION_GRACE_PERIOD_SECONDS]."""
    read_only_root_fs: bool = True
    """Run trainer containers with a read-only root filesystem [DMLT_READ_ONLY_ROOT_FS]."""
    metrics_port: int = 9090
    """Port of the Prometheus /metrics endpoint; 0 disables it [DMLT_METRICS_PORT]."""
    health_port: int = 8080
    """Port of kopf's liveness endpoint (/healthz) [DMLT_HEALTH_PORT]."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to serve; empty for the whole cluster [DMLT_NAMESPACES, comma-separated]."""
    default_storage_secret: str = ""
    """Secret (in the study's namespace) holding the Optuna storage URL of studies that set no
    spec.storage.secretRef; the chart names its PostgreSQL's [DMLT_DEFAULT_STORAGE_SECRET]."""
    default_storage_secret_key: str = "url"
    """Key of the URL in that Secret [DMLT_DEFAULT_STORAGE_SECRET_KEY]."""
    study_reconcile_interval_s: float = 5.0
    """The longest retry interval of a TuningStudy held up by something no watch event announces
    (its database or Secret, MLflow, a refused trial job); the backoff grows up to it. Events
    of the study and of its trial jobs wake it at once [DMLT_STUDY_RECONCILE_INTERVAL_SECONDS]."""
    storage_pool_size: int = 2
    """Connections each Optuna storage keeps open (as many more may open briefly)
    [DMLT_STORAGE_POOL_SIZE]."""
    storage_connect_timeout_s: int = 10
    """Seconds to wait for the database when connecting [DMLT_STORAGE_CONNECT_TIMEOUT_SECONDS]."""
    mlflow_timeout_s: float = 10.0
    """Timeout of each MLflow REST call [DMLT_MLFLOW_TIMEOUT_SECONDS]."""
    require_queue_name: bool = False
    """Refuse (fail with InvalidSpec) new TrainingJobs that name no Kueue LocalQueue in the
    namespaces labelled `queue_namespace_label`, as Kueue's manageJobsWithoutQueueName does for
    its jobs [DMLT_REQUIRE_QUEUE_NAME]."""
    queue_namespace_label: str = "dmlt.io/kueue-managed=true"
    """`key=value` marking the namespaces where require_queue_name applies; empty: every
    namespace [DMLT_QUEUE_NAMESPACE_LABEL]."""
    leader_election: LeaderElectionConfig = LeaderElectionConfig()
    """Which replica acts when several run [DMLT_LEADER_ELECTION, DMLT_LEASE_*]."""
    progress: ProgressConfig = ProgressConfig()
    """Where trainers push progress [DMLT_PROGRESS_*]."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        raw_namespaces = env.get("DMLT_NAMESPACES", "").split(",")
        namespaces = tuple(n.strip() for n in raw_namespaces if n.strip())
        return cls(
            default_tracking_uri=env.get("DMLT_DEFAULT_TRACKING_URI", "").strip(),
            reconcile_interval_s=_float(env, "DMLT_RECONCILE_INTERVAL_SECONDS", 300.0, 0.5),
            log_poll_s=_float(env, "DMLT_LOG_POLL_SECONDS", 5.0, 0.5),
            workers=_int(env, "DMLT_WORKERS", 8, 1),
            api_qps=_float(env, "DMLT_API_QPS", 50.0, 0.1),
            api_burst=_int(env, "DMLT_API_BURST", 100, 1),
            log_tail_lines=_int(env, "DMLT_LOG_TAIL_LINES", 200, 1),
            log_limit_bytes=_int(env, "DMLT_LOG_LIMIT_BYTES", 256 * 1024, 1024),
            gloo_socket_ifname=env.get("DMLT_GLOO_SOCKET_IFNAME", "eth0").strip(),
            termination_grace_period_s=_int(env, "DMLT_TERMINATION_GRACE_PERIOD_SECONDS", 20, 0),
            read_only_root_fs=_bool(env, "DMLT_READ_ONLY_ROOT_FS", True),
            metrics_port=_int(env, "DMLT_METRICS_PORT", 9090, 0),
            health_port=_int(env, "DMLT_HEALTH_PORT", 8080, 1),
            namespaces=namespaces,
            default_storage_secret=env.get("DMLT_DEFAULT_STORAGE_SECRET", "").strip(),
            default_storage_secret_key=env.get("DMLT_DEFAULT_STORAGE_SECRET_KEY", "").strip() or "url",
            study_reconcile_interval_s=_float(env, "DMLT_STUDY_RECONCILE_INTERVAL_SECONDS", 5.0, 0.5),
            storage_pool_size=_int(env, "DMLT_STORAGE_POOL_SIZE", 2, 1),
            storage_connect_timeout_s=_int(env, "DMLT_STORAGE_CONNECT_TIMEOUT_SECONDS", 10, 1),
            mlflow_timeout_s=_float(env, "DMLT_MLFLOW_TIMEOUT_SECONDS", 10.0, 0.1),
            require_queue_name=_bool(env, "DMLT_REQUIRE_QUEUE_NAME", False),
            queue_namespace_label=env.get("DMLT_QUEUE_NAMESPACE_LABEL", "dmlt.io/kueue-managed=true").strip(),
            leader_election=LeaderElectionConfig.from_env(env),
            progress=ProgressConfig.from_env(env),
        )
