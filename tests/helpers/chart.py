"""The chart in the e2e tests: `helm install` with the chart's defaults into a namespace (the
working tree's CRDs applied first: Helm never upgrades CRDs), a check that no other dmlt
operator would reconcile the same objects, and `Dmlt`, the installed release with its API
handles and a teardown that deletes the jobs and uninstalls."""

from __future__ import annotations

import copy
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.helpers.helm_binary import require_helm
from tests.helpers.jobs import load_example
from tests.helpers.kube import (
    apply_crd,
    describe_namespace_pods,
    namespace_alive,
    require_default_storage_class,
    table_row,
)
from tests.helpers.names import CHART, CRD_FILE, GROUP, LABEL_JOB, PLURAL, STUDY_CRD_FILE, VERSION
from tests.helpers.waiting import duration_seconds, run

DEFAULT_RELEASE = "dmlt-e2e"
DEFAULT_HELM_TIMEOUT = os.environ.get("DMLT_E2E_HELM_TIMEOUT", "8m")


def release_fullname(release: str) -> str:
    """The chart's `dmlt.fullname`: the release name, with `-dmlt` unless it contains it."""
    return release if "dmlt" in release else f"{release}-dmlt"


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
        if namespace_alive(core, owner_ns):
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
    storage_class: str

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
        return table_row(
            self.api_client, f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}/{name}"
        )

    def pods(self, job: str) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(self.namespace, label_selector=f"{LABEL_JOB}={job}").items

    def operator_pods(self) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(self.namespace, label_selector=self.operator_selector).items

    # ---- the acting operator replica (the one holding the Lease)
    @property
    def lease_name(self) -> str:
        return f"{release_fullname(self.release)}-operator"

    def lease_holder(self) -> str:
        """The operator Pod holding the Lease ("" when none): a holder identity is the Pod's name
        and a random suffix of its process, `<pod>_<hex>`."""
        leases = client.CoordinationV1Api(self.api_client)
        lease = leases.read_namespaced_lease(self.lease_name, self.namespace)
        return (lease.spec.holder_identity or "").rsplit("_", 1)[0]

    def kill_leader(self, limit_s: float = 60.0) -> tuple[client.V1Pod, float]:
        """Delete the leading operator Pod at once (no grace: as a crash) and wait until another
        live replica holds the Lease; (the killed Pod, seconds from the kill to the handover)."""
        pods = {p.metadata.name: p for p in self.operator_pods() if not p.metadata.deletion_timestamp}
        assert len(pods) >= 2, f"want a standby beside the leader: {sorted(pods)}"
        victim = pods.get(self.lease_holder())
        assert victim is not None, f"Lease {self.lease_name} is held by none of {sorted(pods)}"
        self.core.delete_namespaced_pod(victim.metadata.name, self.namespace, grace_period_seconds=0)
        killed = time.monotonic()
        while time.monotonic() - killed < limit_s:
            holder = self.lease_holder()
            if holder and holder != victim.metadata.name:
                return victim, time.monotonic() - killed
            time.sleep(0.2)
        raise AssertionError(f"no replica took Lease {self.lease_name} over {limit_s:.0f}s after the kill")

    def checkpoint_claim(self, name: str, size: str = "1Gi") -> str:
        """A ReadWriteOnce claim of the default StorageClass that outlives the Pods (so a gang
        restart resumes from it), made as examples/ddp.yaml makes its own."""
        claim, _ = load_example()
        claim = copy.deepcopy(claim)
        claim["metadata"] = {
            "name": name,
            "labels": {**claim["metadata"].get("labels", {}), "dmlt-e2e": "true"},
        }
        claim["spec"]["resources"] = {"requests": {"storage": size}}
        self.core.create_namespaced_persistent_volume_claim(self.namespace, claim)
        return name

    # ---- teardown
    def teardown(self) -> list[str]:
        """Delete the jobs (the operator drops their finalizers), then uninstall the release.
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
        return problems


def install(
    api_client: client.ApiClient,
    namespace: str,
    helm: str,
    *,
    release: str = DEFAULT_RELEASE,
    timeout: str = DEFAULT_HELM_TIMEOUT,
    values: Mapping[str, Any] | None = None,
) -> Dmlt:
    """`helm install RELEASE ./helm/dmlt -n NAMESPACE --wait`: the chart's defaults (MLflow and
    PostgreSQL on their claims of the default StorageClass), plus any `values` a test needs."""
    storage_class = require_default_storage_class(api_client)
    check_no_other_operator(api_client, namespace)
    clear_stale_cluster_objects(api_client, release)
    apply_crd(api_client, CRD_FILE)
    apply_crd(api_client, STUDY_CRD_FILE)
    dmlt = Dmlt(api_client, namespace, release, helm, storage_class)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="dmlt-e2e-values-", delete=False) as fh:
        yaml.safe_dump(dict(values or {}), fh)
        values_file = fh.name
    started = time.monotonic()
    command = [helm, "install", release, str(CHART), "-n", namespace, "--wait", "--timeout", timeout]
    try:
        run(
            [*command, "-f", values_file],
            duration_seconds(timeout) + 60,
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
        f"(default StorageClass: {storage_class})"
    )
    return dmlt


@contextmanager
def installed_chart(
    api_client: client.ApiClient,
    namespace: str,
    *,
    release: str = DEFAULT_RELEASE,
    values: Mapping[str, Any] | None = None,
) -> Iterator[Dmlt]:
    """The chart installed for an e2e module (a failed install fails the test with helm's
    message and the namespace's Pods); torn down afterwards, problems printed, never raised."""
    helm = require_helm()
    try:
        installed = install(api_client, namespace, helm, release=release, values=values)
    except AssertionError as exc:
        pytest.fail(f"installing the chart failed: {exc}", pytrace=False)
    try:
        yield installed
    finally:
        problems = installed.teardown()
        if problems:
            print("teardown problems:\n" + "\n".join(problems))
