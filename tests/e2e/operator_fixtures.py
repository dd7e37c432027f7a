"""Helpers for the TrainingJob e2e tests (`test_trainingjob.py`) and `benchmarks/bench_operator.py`.

Everything talks to the cluster in KUBECONFIG through the `kubernetes` client (and helm for the
install). Nothing here skips: a helper that cannot do its job raises AssertionError with a
message that says what was seen, and `diagnose()` collects the job's status, its Pods, its
Events and the operator's log for failure messages.

- `install()` / `Dmlt.teardown()`: the chart in a namespace (`helm install --wait`), with the
  CRD from the working tree applied first (Helm never upgrades CRDs), MLflow persistence off
  when the cluster has no default StorageClass, and a check that no other dmlt operator would
  reconcile the same jobs.
- `Dmlt.checkpoint_claim()`: a claim that survives a gang restart: the default StorageClass's,
  or (no StorageClass) a hostPath PersistentVolume bound to it, made writable for uid 10001.
- `job_manifest()`: examples/ddp.yaml's TrainingJob with test-sized trainer settings.
- `JobPoller`: polls a job through the Table API (the printer columns of `kubectl get tj`, with
  the object), remembering every distinct (phase, ready, progress, restarts) it saw.
- `PodCensus`: watches a job's Pods and records how many existed at once and every uid.
- `mlflow_get()`: the in-cluster MLflow REST API through the apiserver's service proxy (or, if
  that path is refused, a one-shot Pod in the namespace).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "dmlt"
CRD_FILE = CHART / "crds" / "trainingjobs.dmlt.io.yaml"
EXAMPLE = ROOT / "examples" / "ddp.yaml"

GROUP, VERSION, PLURAL = "dmlt.io", "v1alpha1", "trainingjobs"
CRD_NAME = f"{PLURAL}.{GROUP}"
LABEL_JOB = "dmlt.io/job-name"
LABEL_RANK = "dmlt.io/rank"
LABEL_ATTEMPT = "dmlt.io/attempt"
TRAINER_CONTAINER = "trainer"
TRAINER_UID = 10001
DEFAULT_RELEASE = "dmlt-e2e"
DEFAULT_HELM_TIMEOUT = os.environ.get("DMLT_E2E_HELM_TIMEOUT", "8m")
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io"


# --------------------------------------------------------------------------- small utilities


def wait_for(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    interval: float = 1.0,
    diag: Callable[[], str] | None = None,
) -> Any:
    """Call `check` until it returns something truthy; AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - transient API errors: retry until the deadline
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            extra = f"\n{diag()}" if diag else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{extra}")
        time.sleep(interval)


def run(cmd: list[str], timeout: float, what: str) -> str:
    """Run a command; AssertionError with its output when it fails or hangs."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{what}: `{' '.join(cmd)}` did not finish in {timeout:.0f}s: {exc}") from None
    if proc.returncode != 0:
        raise AssertionError(
            f"{what}: `{' '.join(cmd)}` exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc.stdout


def parse_k8s_time(text: str) -> datetime:
    """RFC 3339 with up to nanoseconds (log timestamps) → aware datetime (microseconds)."""
    text = text.strip().replace("Z", "+00:00")
    if "." in text:
        head, rest = text.split(".", 1)
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def json_events(text: str, event: str | None = None) -> list[dict[str, Any]]:
    """The trainer's JSON lines (`{"event": ...}`) in a log, optionally only one kind."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith("{") and line.endswith("}")):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "event" in obj and (event is None or obj["event"] == event):
            out.append(obj)
    return out


def pod_log(
    core: client.CoreV1Api,
    ns: str,
    name: str,
    *,
    container: str | None = TRAINER_CONTAINER,
    timestamps: bool = False,
    tail_lines: int | None = None,
) -> str:
    """A Pod's log as text. Raw bytes: the client would json-decode a one-document log."""
    kwargs: dict[str, Any] = {"timestamps": timestamps, "_preload_content": False, "_request_timeout": 60}
    if container:
        kwargs["container"] = container
    if tail_lines:
        kwargs["tail_lines"] = tail_lines
    response = core.read_namespaced_pod_log(name, ns, **kwargs)
    return response.data.decode("utf-8", errors="replace")


def try_pod_log(core: client.CoreV1Api, ns: str, name: str, **kwargs: Any) -> str:
    try:
        return pod_log(core, ns, name, **kwargs)
    except ApiException as exc:
        return f"<no log of {name}: {exc.status} {exc.reason}>"


def timestamped_events(text: str, event: str | None = None) -> list[tuple[datetime, dict[str, Any]]]:
    """JSON events of a log read with timestamps=True, each with the kubelet's timestamp."""
    out = []
    for line in text.splitlines():
        stamp, _, rest = line.partition(" ")
        found = json_events(rest, event)
        if found:
            try:
                out.append((parse_k8s_time(stamp), found[0]))
            except ValueError:
                continue
    return out


def raw_request(
    api_client: client.ApiClient,
    method: str,
    path: str,
    query: Mapping[str, str] | None = None,
    *,
    body: Any = None,
    accept: str = "application/json",
    timeout: float = 30,
) -> bytes:
    """One apiserver request (Table views, service proxy, whole CRDs) without the client's
    models; the response body as bytes; ApiException unless 2xx."""
    headers = {"Accept": accept}
    if body is not None:
        headers["Content-Type"] = "application/json"
    method, url, headers, body, _ = api_client.param_serialize(
        method,
        path,
        query_params=list((query or {}).items()),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(method, url, header_params=headers, body=body, _request_timeout=timeout)
    data = response.read()
    if not 200 <= response.status <= 299:
        raise ApiException(
            status=response.status, reason=response.reason, body=data.decode("utf-8", errors="replace")
        )
    return data


def raw_get(
    api_client: client.ApiClient,
    path: str,
    query: Mapping[str, str] | None = None,
    *,
    accept: str = "application/json",
    timeout: float = 30,
) -> bytes:
    return raw_request(api_client, "GET", path, query, accept=accept, timeout=timeout)


# --------------------------------------------------------------------------- manifests


def load_example() -> tuple[dict[str, Any], dict[str, Any]]:
    """examples/ddp.yaml: (its PersistentVolumeClaim, its TrainingJob)."""
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    claims = [d for d in docs if d.get("kind") == "PersistentVolumeClaim"]
    jobs = [d for d in docs if d.get("kind") == "TrainingJob"]
    assert len(claims) == 1 and len(jobs) == 1, f"{EXAMPLE} should hold one claim and one TrainingJob"
    return claims[0], jobs[0]


def job_manifest(
    name: str,
    *,
    trainer: Mapping[str, Any] | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    run_policy: Mapping[str, Any] | None = None,
    image: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """examples/ddp.yaml's TrainingJob renamed, with the given parts of its spec replaced."""
    _, job = load_example()
    job = copy.deepcopy(job)
    job["metadata"] = {"name": name}
    s = job["spec"]
    if trainer is not None:
        s["trainer"] = dict(trainer)
    if checkpoint is not None:
        s["checkpoint"] = dict(checkpoint)
    if run_policy is not None:
        s["runPolicy"] = {**s.get("runPolicy", {}), **run_policy}
    s["image"] = image or os.environ.get("DMLT_TRAINER_IMAGE") or s["image"]
    s.update(spec)
    return job


# --------------------------------------------------------------------------- the install


def release_fullname(release: str) -> str:
    """The chart's `dmlt.fullname`: the release name, with `-dmlt` unless it contains it."""
    return release if "dmlt" in release else f"{release}-dmlt"


def default_storage_class(api_client: client.ApiClient) -> str | None:
    classes = client.StorageV1Api(api_client).list_storage_class().items
    for sc in classes:
        annotations = sc.metadata.annotations or {}
        if (
            annotations.get("storageclass.kubernetes.io/is-default-class") == "true"
            or annotations.get("storageclass.beta.kubernetes.io/is-default-class") == "true"
        ):
            return sc.metadata.name
    return None


def ready_node(api_client: client.ApiClient) -> str:
    nodes = client.CoreV1Api(api_client).list_node().items
    for node in nodes:
        if node.spec.unschedulable:
            continue
        if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []):
            return node.metadata.name
    raise AssertionError(f"no Ready, schedulable node among {[n.metadata.name for n in nodes]}")


def apply_crd(api_client: client.ApiClient, timeout: float = 60) -> None:
    """Create or replace the CRD from the working tree (Helm installs crds/ once, never upgrades).

    Raw requests: the CRD's schema need not round-trip through the client's models."""
    body = yaml.safe_load(CRD_FILE.read_text())
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    try:
        current = json.loads(raw_get(api_client, f"{path}/{CRD_NAME}"))
    except ApiException as exc:
        if exc.status != 404:
            raise
        raw_request(api_client, "POST", path, body=body)
    else:
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        raw_request(api_client, "PUT", f"{path}/{CRD_NAME}", body=body)

    def established() -> bool:
        crd = json.loads(raw_get(api_client, f"{path}/{CRD_NAME}"))
        conditions = (crd.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_for(established, timeout, f"CRD {CRD_NAME} to be Established")


def _namespace_alive(core: client.CoreV1Api, ns: str | None) -> bool:
    if not ns:
        return False
    try:
        return core.read_namespace(ns).status.phase != "Terminating"
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def check_no_other_operator(api_client: client.ApiClient, ns: str) -> None:
    """Another dmlt operator serving this namespace would act on the test's jobs too."""
    apps = client.AppsV1Api(api_client)
    others = []
    for dep in apps.list_deployment_for_all_namespaces(
        label_selector="app.kubernetes.io/part-of=dmlt,app.kubernetes.io/component=operator"
    ).items:
        if dep.metadata.namespace == ns or not dep.spec.replicas:
            continue
        env = {e.name: e.value for c in dep.spec.template.spec.containers for e in c.env or []}
        served = [n for n in (env.get("DMLT_NAMESPACES") or "").split(",") if n]
        if not served or ns in served:
            others.append(f"{dep.metadata.namespace}/{dep.metadata.name}")
    assert not others, (
        f"other dmlt operator(s) serve every namespace: {others}; they would reconcile the test's "
        "TrainingJobs as well (duplicate Pods). Uninstall them or scale them to 0 first."
    )


def clear_stale_cluster_objects(api_client: client.ApiClient, release: str) -> None:
    """A crashed earlier run may leave the release's ClusterRole(Binding) behind, owned by a
    namespace that is gone: helm would refuse to install over them."""
    rbac = client.RbacAuthorizationV1Api(api_client)
    core = client.CoreV1Api(api_client)
    name = f"{release_fullname(release)}-operator"
    for read, delete, kind in (
        (rbac.read_cluster_role, rbac.delete_cluster_role, "ClusterRole"),
        (rbac.read_cluster_role_binding, rbac.delete_cluster_role_binding, "ClusterRoleBinding"),
    ):
        try:
            obj = read(name)
        except ApiException as exc:
            if exc.status == 404:
                continue
            raise
        owner_ns = (obj.metadata.annotations or {}).get("meta.helm.sh/release-namespace")
        if _namespace_alive(core, owner_ns):
            raise AssertionError(
                f"{kind} {name} belongs to a live release {release!r} in namespace {owner_ns}: "
                f"`helm uninstall {release} -n {owner_ns}` first"
            )
        delete(name)


@dataclass
class Dmlt:
    """The chart installed in one namespace, plus what the tests created outside it."""

    api_client: client.ApiClient
    namespace: str
    release: str
    helm: str
    storage_class: str | None
    node: str
    volumes: list[str] = field(default_factory=list)
    """hostPath PersistentVolumes this run created (cluster-scoped: deleted on teardown)."""

    # ---- API handles
    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    @property
    def mlflow_service(self) -> str:
        return f"{release_fullname(self.release)}-mlflow"

    @property
    def operator_selector(self) -> str:
        return f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=operator"

    # ---- TrainingJobs
    def create_job(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, manifest)

    def get_job(self, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete_job(self, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def job_table(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(printer columns as `kubectl get tj` shows them, the object) in one read."""
        data = raw_get(
            self.api_client,
            f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}/{name}",
            {"includeObject": "Object"},
            accept=TABLE_ACCEPT,
        )
        table = json.loads(data)
        names = [c["name"] for c in table["columnDefinitions"]]
        row = table["rows"][0]
        return dict(zip(names, row["cells"], strict=False)), row["object"]

    def pods(self, job: str) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(self.namespace, label_selector=f"{LABEL_JOB}={job}").items

    def operator_pods(self) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(self.namespace, label_selector=self.operator_selector).items

    # ---- storage
    def checkpoint_claim(self, name: str, size: str = "1Gi") -> str:
        """A ReadWriteOnce claim that outlives the Pods (so a gang restart resumes from it).

        With a default StorageClass: a plain claim. Without one: a hostPath PersistentVolume
        pinned to a node and pre-bound to the claim; hostPath ignores fsGroup, so a root Pod
        makes the directory the trainer's (uid 10001) before any job mounts it.
        """
        claim: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "dmlt", "dmlt-e2e": "true"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
        }
        if self.storage_class is not None:
            self.core.create_namespaced_persistent_volume_claim(self.namespace, claim)
            return name
        pv_name = f"{self.namespace}-{name}"[:253]
        path = f"/tmp/dmlt-e2e/{self.namespace}/{name}"
        self.core.create_persistent_volume(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv_name, "labels": {"dmlt-e2e": "true"}},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "claimRef": {"namespace": self.namespace, "name": name},
                    "hostPath": {"path": path, "type": "DirectoryOrCreate"},
                    "nodeAffinity": {
                        "required": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {
                                            "key": "kubernetes.io/hostname",
                                            "operator": "In",
                                            "values": [self._node_hostname()],
                                        }
                                    ]
                                }
                            ]
                        }
                    },
                },
            }
        )
        self.volumes.append(pv_name)
        claim["spec"]["storageClassName"] = ""
        claim["spec"]["volumeName"] = pv_name
        self.core.create_namespaced_persistent_volume_claim(self.namespace, claim)
        wait_for(
            lambda: (
                self.core.read_namespaced_persistent_volume_claim(name, self.namespace).status.phase
                == "Bound"
            ),
            60,
            f"claim {name} to bind to the hostPath volume {pv_name}",
        )
        self._chown_claim(name)
        return name

    def _node_hostname(self) -> str:
        node = self.core.read_node(self.node)
        return (node.metadata.labels or {}).get("kubernetes.io/hostname", self.node)

    def _chown_claim(self, claim: str) -> None:
        pod_name = f"chown-{uuid.uuid4().hex[:8]}"
        script = f"import os; os.chown('/ckpt', {TRAINER_UID}, {TRAINER_UID}); os.chmod('/ckpt', 0o775)"
        self.core.create_namespaced_pod(
            self.namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod_name, "labels": {"dmlt-e2e": "true"}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "chown",
                            "image": os.environ.get("DMLT_TRAINER_IMAGE", "dmlt-trainer:dev"),
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["python3", "-c", script],
                            "securityContext": {"runAsUser": 0, "runAsNonRoot": False},
                            "volumeMounts": [{"name": "ckpt", "mountPath": "/ckpt"}],
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                        }
                    ],
                    "volumes": [{"name": "ckpt", "persistentVolumeClaim": {"claimName": claim}}],
                },
            },
        )
        phase = wait_for(
            lambda: (
                (p := self.core.read_namespaced_pod(pod_name, self.namespace).status.phase)
                in ("Succeeded", "Failed")
                and p
            ),
            240,
            f"Pod {pod_name} that makes claim {claim} writable for uid {TRAINER_UID}",
            diag=lambda: describe_pod(self.core, self.namespace, pod_name),
        )
        log = try_pod_log(self.core, self.namespace, pod_name, container="chown")
        assert phase == "Succeeded", f"chown Pod for claim {claim} {phase}: {log}"
        self.core.delete_namespaced_pod(pod_name, self.namespace, grace_period_seconds=0)

    # ---- teardown
    def teardown(self) -> list[str]:
        """Delete the jobs (the operator drops their finalizers), uninstall, drop the volumes.
        Returns the problems met; never raises (a failed test's message stays the first one)."""
        problems: list[str] = []
        try:
            jobs = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)["items"]
            for job in jobs:
                self.delete_job(job["metadata"]["name"])
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                left = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
                if not left["items"]:
                    break
                time.sleep(2)
            else:
                for job in left["items"]:
                    name = job["metadata"]["name"]
                    problems.append(f"TrainingJob {name} kept its finalizer for 120 s; removed by hand")
                    self.custom.patch_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, PLURAL, name, {"metadata": {"finalizers": None}}
                    )
        except Exception as exc:  # noqa: BLE001
            problems.append(f"deleting TrainingJobs: {exc}")
        try:
            run(
                [self.helm, "uninstall", self.release, "-n", self.namespace, "--wait", "--timeout", "3m"],
                240,
                "helm uninstall",
            )
        except AssertionError as exc:
            problems.append(str(exc))
        for pv in self.volumes:
            try:
                self.core.delete_persistent_volume(pv)
            except ApiException as exc:
                if exc.status != 404:
                    problems.append(f"deleting PersistentVolume {pv}: {exc.status} {exc.reason}")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"deleting PersistentVolume {pv}: {exc}")
        return problems


def install(
    api_client: client.ApiClient,
    namespace: str,
    helm: str,
    *,
    release: str = DEFAULT_RELEASE,
    timeout: str = DEFAULT_HELM_TIMEOUT,
    extra_values: Mapping[str, Any] | None = None,
) -> Dmlt:
    """`helm install RELEASE ./helm/dmlt -n NAMESPACE --wait` with values this cluster can run."""
    storage_class = default_storage_class(api_client)
    node = ready_node(api_client)
    check_no_other_operator(api_client, namespace)
    clear_stale_cluster_objects(api_client, release)
    apply_crd(api_client)
    values: dict[str, Any] = {
        "operator": {"image": {"pullPolicy": "IfNotPresent"}},
        # No default StorageClass: the MLflow claim would stay Pending and `--wait` would hang.
        "mlflow": {
            "image": {"pullPolicy": "IfNotPresent"},
            "persistence": {"enabled": storage_class is not None},
        },
        # Only TuningStudies need the database; their tests turn it on (with a volume).
        "postgresql": {"enabled": False},
    }
    for key, value in (extra_values or {}).items():
        if isinstance(value, Mapping) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    dmlt = Dmlt(api_client, namespace, release, helm, storage_class, node)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="dmlt-e2e-values-", delete=False) as fh:
        yaml.safe_dump(values, fh)
        values_file = fh.name
    started = time.monotonic()
    try:
        run(
            [
                helm,
                "install",
                release,
                str(CHART),
                "-n",
                namespace,
                "--wait",
                "--timeout",
                timeout,
                "-f",
                values_file,
            ],
            _helm_seconds(timeout) + 60,
            f"helm install {release} into {namespace}",
        )
    except AssertionError as exc:
        diag = describe_namespace_pods(dmlt.core, namespace)
        dmlt.teardown()
        raise AssertionError(f"{exc}\n{diag}") from None
    finally:
        os.unlink(values_file)
    print(
        f"helm install {release} -n {namespace}: {time.monotonic() - started:.1f}s "
        f"(default StorageClass: {storage_class}, node {node})"
    )
    return dmlt


def _helm_seconds(timeout: str) -> float:
    total, number = 0.0, ""
    for ch in timeout:
        if ch.isdigit() or ch == ".":
            number += ch
        else:
            total += float(number or 0) * {"h": 3600, "m": 60, "s": 1}.get(ch, 1)
            number = ""
    return total + float(number or 0)


# --------------------------------------------------------------------------- observing jobs


@dataclass(frozen=True, slots=True)
class Seen:
    """One distinct state of a job as `kubectl get tj` would have shown it."""

    t: float
    """Seconds since the poller started."""
    phase: str | None
    ready: str | None
    progress: str | None
    restarts: int | None
    epoch: int | None
    epochs: int | None
    attempt: int | None

    def __str__(self) -> str:
        return (
            f"+{self.t:6.1f}s phase={self.phase} ready={self.ready} progress={self.progress} "
            f"restarts={self.restarts} attempt={self.attempt}"
        )


class JobPoller:
    """Polls one job (printer columns + object) and remembers each distinct state it saw."""

    def __init__(self, dmlt: Dmlt, name: str) -> None:
        self.dmlt = dmlt
        self.name = name
        self.started = time.monotonic()
        self.seen: list[Seen] = []
        self.last: dict[str, Any] | None = None

    def poll(self) -> dict[str, Any]:
        columns, obj = self.dmlt.job_table(self.name)
        status = obj.get("status") or {}
        progress = status.get("progress") or {}
        seen = Seen(
            t=round(time.monotonic() - self.started, 1),
            phase=columns.get("Phase") or None,
            ready=columns.get("Ready") or None,
            progress=columns.get("Progress") or None,
            restarts=columns.get("Restarts"),
            epoch=progress.get("epoch"),
            epochs=progress.get("epochs"),
            attempt=status.get("attempt"),
        )
        if not self.seen or _key(self.seen[-1]) != _key(seen):
            self.seen.append(seen)
        self.last = obj
        return obj

    def until(
        self,
        done: Callable[[dict[str, Any]], bool],
        timeout: float,
        what: str,
        *,
        interval: float = 1.0,
        fail_on_failed: bool = True,
    ) -> dict[str, Any]:
        """Poll until `done(job)`; fail early when the job turns Failed (unless expected)."""
        deadline = time.monotonic() + timeout
        errors = 0
        while True:
            try:
                obj = self.poll()
                errors = 0
            except ApiException as exc:
                errors += 1
                if errors > 30:
                    raise AssertionError(f"cannot read TrainingJob {self.name}: {exc}") from None
                time.sleep(interval)
                continue
            if done(obj):
                return obj
            phase = (obj.get("status") or {}).get("phase")
            if fail_on_failed and phase == "Failed":
                raise AssertionError(
                    f"TrainingJob {self.name} Failed while waiting for {what}:\n{self.history()}\n"
                    f"{diagnose(self.dmlt, self.name)}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {what}; states seen:\n{self.history()}\n"
                    f"{diagnose(self.dmlt, self.name)}"
                )
            time.sleep(interval)

    def history(self) -> str:
        return "\n".join(f"  {s}" for s in self.seen)


def _key(seen: Seen) -> tuple[Any, ...]:
    return (seen.phase, seen.ready, seen.progress, seen.restarts, seen.attempt)


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda job: (job.get("status") or {}).get("phase") in phases


def running_at_epoch(min_epoch: int) -> Callable[[dict[str, Any]], bool]:
    """Running, with rank 0 having reported at least `min_epoch` epochs (but not all)."""

    def check(job: dict[str, Any]) -> bool:
        status = job.get("status") or {}
        progress = status.get("progress") or {}
        epoch, epochs = progress.get("epoch"), progress.get("epochs")
        if status.get("phase") == "Succeeded" or (
            epoch is not None and epochs is not None and epoch >= epochs
        ):
            raise AssertionError(
                f"TrainingJob {job['metadata']['name']} finished before the test could act mid-training "
                f"(progress {progress}); make the trainer settings bigger (DMLT_E2E_TRAINER)"
            )
        return status.get("phase") == "Running" and epoch is not None and epoch >= min_epoch

    return check


class PodCensus:
    """Watches the Pods of one job; records the most that existed at once and every uid.

    A Pod counts from its creation to its deletion from the API (terminating Pods still count).
    """

    def __init__(self, core: client.CoreV1Api, namespace: str, job: str) -> None:
        self.core = core
        self.namespace = namespace
        self.selector = f"{LABEL_JOB}={job}"
        self.present: dict[str, str] = {}
        self.uids: dict[str, tuple[str, str | None]] = {}
        """uid → (Pod name, attempt label)."""
        self.max_present = 0
        self.max_names: list[str] = []
        self.errors: list[str] = []
        self._started_once = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"census-{job}", daemon=True)

    def __enter__(self) -> PodCensus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._started_once and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=40)

    def _see(self, kind: str, pod: client.V1Pod) -> None:
        uid, name = pod.metadata.uid, pod.metadata.name
        with self._lock:
            if kind == "DELETED":
                self.present.pop(uid, None)
            else:
                self.present[uid] = name
                self.uids.setdefault(uid, (name, (pod.metadata.labels or {}).get(LABEL_ATTEMPT)))
            if len(self.present) > self.max_present:
                self.max_present = len(self.present)
                self.max_names = sorted(self.present.values())

    def _run(self) -> None:
        rv: str | None = None
        w = watch.Watch()
        while not self._stop.is_set():
            try:
                if rv is None:
                    listed = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
                    with self._lock:
                        live = {p.metadata.uid for p in listed.items}
                        for uid in list(self.present):
                            if uid not in live:
                                self.present.pop(uid)
                    for pod in listed.items:
                        self._see("ADDED", pod)
                    rv = listed.metadata.resource_version
                    self._started_once = True
                for event in w.stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=rv,
                    timeout_seconds=10,
                    allow_watch_bookmarks=True,
                ):
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        rv = None
                        break
                    if kind == "BOOKMARK" or isinstance(obj, dict):
                        rv = w.resource_version or rv
                    else:
                        rv = obj.metadata.resource_version
                        self._see(kind, obj)
                    if self._stop.is_set():
                        w.stop()
                        break
            except ApiException as exc:
                if exc.status == 410:
                    rv = None
                    continue
                self.errors.append(f"{exc.status} {exc.reason}")
                time.sleep(1)
            except Exception as exc:  # noqa: BLE001 - connection reset etc.: resume the watch
                self.errors.append(repr(exc))
                time.sleep(1)

    def summary(self) -> str:
        with self._lock:
            pods = ", ".join(f"{n} (attempt {a}, uid {u[:8]})" for u, (n, a) in self.uids.items())
            return f"max {self.max_present} at once ({self.max_names}); all Pods seen: {pods}"


# --------------------------------------------------------------------------- diagnostics


def describe_pod(core: client.CoreV1Api, ns: str, name: str) -> str:
    try:
        pod = core.read_namespaced_pod(name, ns)
    except ApiException as exc:
        return f"Pod {name}: {exc.status} {exc.reason}"
    states = []
    for cs in pod.status.container_statuses or []:
        state = cs.state
        if state.running:
            states.append(f"{cs.name}: running since {state.running.started_at}")
        elif state.terminated:
            t = state.terminated
            states.append(f"{cs.name}: terminated {t.reason} exit {t.exit_code} {t.message or ''}".strip())
        elif state.waiting:
            states.append(f"{cs.name}: waiting {state.waiting.reason} {state.waiting.message or ''}".strip())
    conds = [
        f"{c.type}={c.status}{'(' + c.reason + ')' if c.reason else ''}" for c in pod.status.conditions or []
    ]
    labels = pod.metadata.labels or {}
    return (
        f"Pod {name} attempt={labels.get(LABEL_ATTEMPT)} phase={pod.status.phase} "
        f"deleting={bool(pod.metadata.deletion_timestamp)} {'; '.join(states)} [{' '.join(conds)}]"
    )


def describe_namespace_pods(core: client.CoreV1Api, ns: str) -> str:
    try:
        pods = core.list_namespaced_pod(ns).items
        lines = [describe_pod(core, ns, p.metadata.name) for p in pods]
        events = core.list_namespaced_event(ns).items
    except Exception as exc:  # noqa: BLE001 - diagnostics must not hide the failure they explain
        return f"<cannot describe the Pods in {ns}: {exc}>"
    events.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp))
    lines += [
        f"event {e.type} {e.reason} {e.involved_object.kind}/{e.involved_object.name}: {e.message}"
        for e in events[-30:]
    ]
    return "\n".join(lines)


def job_events(dmlt: Dmlt, job: str) -> list[client.CoreV1Event]:
    events = dmlt.core.list_namespaced_event(
        dmlt.namespace, field_selector=f"involvedObject.name={job},involvedObject.kind=TrainingJob"
    ).items
    events.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp))
    return events


def diagnose(dmlt: Dmlt, job: str, operator_log_lines: int = 60) -> str:
    """Everything worth reading when a job did not do what a test expected."""
    out = [f"--- diagnosis of TrainingJob {dmlt.namespace}/{job}"]
    try:
        obj = dmlt.get_job(job)
        out.append(
            "status:\n" + textwrap.indent(yaml.safe_dump((obj or {}).get("status"), sort_keys=False), "  ")
        )
    except Exception as exc:  # noqa: BLE001
        out.append(f"<cannot read the job: {exc}>")
    try:
        for pod in dmlt.pods(job):
            out.append(describe_pod(dmlt.core, dmlt.namespace, pod.metadata.name))
            tail = try_pod_log(dmlt.core, dmlt.namespace, pod.metadata.name, tail_lines=8)
            out.append(textwrap.indent(tail[-3000:], "    | "))
        out += [f"event {e.type} {e.reason}: {e.message}" for e in job_events(dmlt, job)]
        for pod in dmlt.operator_pods():
            out.append(f"operator {pod.metadata.name} log (last {operator_log_lines} lines):")
            log = try_pod_log(
                dmlt.core, dmlt.namespace, pod.metadata.name, container=None, tail_lines=operator_log_lines
            )
            out.append(textwrap.indent(log[-8000:], "    | "))
    except Exception as exc:  # noqa: BLE001
        out.append(f"<diagnosis incomplete: {exc}>")
    return "\n".join(out)


# --------------------------------------------------------------------------- MLflow


MLFLOW_POD_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time, urllib.parse, urllib.request
    url = os.environ["URL"]
    for attempt in range(30):
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                print("MLFLOW-JSON " + json.dumps(json.loads(resp.read())), flush=True)
                sys.exit(0)
        except Exception as exc:
            print("retry:", exc, file=sys.stderr, flush=True)
            time.sleep(2)
    sys.exit("MLflow unreachable: " + url)
    """
)


def mlflow_get(dmlt: Dmlt, path: str, query: Mapping[str, str], port: str = "http") -> dict[str, Any]:
    """GET the in-cluster MLflow REST API (e.g. `api/2.0/mlflow/runs/get`), parsed JSON.

    Through the apiserver's service proxy; if the proxy path is refused (some clusters block
    it), from a one-shot Pod in the namespace instead.
    """
    try:
        data = raw_get(
            dmlt.api_client,
            f"/api/v1/namespaces/{dmlt.namespace}/services/{dmlt.mlflow_service}:{port}/proxy/{path}",
            query,
        )
        return json.loads(data)
    except (ApiException, ValueError) as exc:
        proxy_error = exc
        print(f"MLflow through the service proxy failed ({exc}); asking from a Pod instead")
    return _mlflow_get_from_pod(dmlt, path, query, proxy_error)


def _mlflow_get_from_pod(dmlt: Dmlt, path: str, query: Mapping[str, str], why: Exception) -> dict[str, Any]:
    from urllib.parse import urlencode

    url = f"http://{dmlt.mlflow_service}.{dmlt.namespace}.svc:5000/{path}?{urlencode(dict(query))}"
    name = f"mlflow-query-{uuid.uuid4().hex[:8]}"
    dmlt.core.create_namespaced_pod(
        dmlt.namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"dmlt-e2e": "true"}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": TRAINER_UID,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "query",
                        "image": os.environ.get("DMLT_TRAINER_IMAGE", "dmlt-trainer:dev"),
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python3", "-c", MLFLOW_POD_SCRIPT],
                        "env": [{"name": "URL", "value": url}],
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                    }
                ],
            },
        },
    )
    try:
        phase = wait_for(
            lambda: (
                (p := dmlt.core.read_namespaced_pod(name, dmlt.namespace).status.phase)
                in ("Succeeded", "Failed")
                and p
            ),
            240,
            f"Pod {name} querying MLflow ({url}; the service proxy failed: {why})",
            diag=lambda: describe_pod(dmlt.core, dmlt.namespace, name),
        )
        log = pod_log(dmlt.core, dmlt.namespace, name, container="query")
        assert phase == "Succeeded", f"MLflow query {url} failed (service proxy failed too: {why}):\n{log}"
        for line in log.splitlines():
            if line.startswith("MLFLOW-JSON "):
                return json.loads(line[len("MLFLOW-JSON ") :])
        raise AssertionError(f"no MLflow answer in the log of {name}:\n{log}")
    finally:
        dmlt.core.delete_namespaced_pod(name, dmlt.namespace, grace_period_seconds=0)


def finished_lines(dmlt: Dmlt, job: str) -> dict[int, dict[str, Any]]:
    """rank → the `finished` JSON line each Pod of the job printed (read from its log)."""
    out: dict[int, dict[str, Any]] = {}
    for pod in dmlt.pods(job):
        for event in json_events(pod_log(dmlt.core, dmlt.namespace, pod.metadata.name), "finished"):
            out[int(event["rank"])] = event
    return out


def epoch_numbers(text: str) -> list[int]:
    return [int(e["epoch"]) for e in json_events(text, "epoch")]


def pods_by_rank(pods: Iterable[client.V1Pod]) -> dict[int, client.V1Pod]:
    return {int((p.metadata.labels or {})[LABEL_RANK]): p for p in pods}
