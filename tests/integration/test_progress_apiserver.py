"""The progress receiver against a real kube-apiserver (issue 15, slice 5).

What a unit test cannot show: a projected token minted by the apiserver (TokenRequest, bound to
a Pod, audience `dmlt.io/progress/<ns>/<job>/<uid>`) passes the receiver's TokenReview for its
own job only; one of another audience, of another job's Pod, or garbage is refused; the
apiserver itself does not accept that token for its API; the uid-guarded patch lands in the job's
status (and not in a job recreated under the same name); and the chart, rendered against the
cluster, grants the operator what it needs and makes a CA and serving certificate it keeps.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from dmlt_contract import progress_audience, progress_path
from dmlt_operator.core.kube import ProgressApi
from dmlt_operator.trainingjob import progress_server as ps
from dmlt_trainer.progress_push import ProgressPusher, https_sender

from tests.helpers.apiserver import APISERVER_MARKS, NS, apply_job, get_job, job_gone, wait_until
from tests.helpers.helm_binary import require_helm
from tests.helpers.tls import make_tls

pytestmark = APISERVER_MARKS

ROOT = Path(__file__).resolve().parents[2]


def render_against(cluster) -> dict[tuple[str, str], dict]:
    """The chart as `helm install` renders it into this cluster (lookup works)."""
    out = subprocess.run(
        [require_helm(), "template", "dmlt", str(ROOT / "helm" / "dmlt"), "--namespace", "dmlt",
         "--dry-run=server", "--kube-version", "1.34.0", "--kubeconfig", str(cluster["work"] / "admin.kubeconfig")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}


def kubectl_apply(cluster, *objs) -> None:
    subprocess.run([*cluster["kubectl"], "apply", "-f", "-"], input=yaml.safe_dump_all(objs),
                   text=True, check=True, capture_output=True)  # fmt: skip


def create_job(cluster, name: str) -> str:
    """A TrainingJob with a status, as the operator leaves it in the tick that creates its Pods; its uid."""
    apply_job(cluster, name)
    cluster["custom"].patch_namespaced_custom_object_status(
        "dmlt.io", "v1alpha1", NS, "trainingjobs", name, {"status": {"phase": "Running"}})  # fmt: skip
    return get_job(cluster, name)["metadata"]["uid"]


def make_pod(cluster, name: str) -> str:
    body = {"metadata": {"name": name, "namespace": NS},
            "spec": {"containers": [{"name": "trainer", "image": "x"}]}}  # fmt: skip
    return cluster["core"].create_namespaced_pod(NS, body).metadata.uid


def pod_token(cluster, audience: str, pod: str, pod_uid: str) -> str:
    """What the kubelet puts in a projected serviceAccountToken volume: TokenRequest, Pod-bound."""
    from kubernetes import client

    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
        audiences=[audience], expiration_seconds=3600,
        bound_object_ref=client.V1BoundObjectReference(kind="Pod", api_version="v1", name=pod, uid=pod_uid),
    ))  # fmt: skip
    return cluster["core"].create_namespaced_service_account_token("default", NS, request).status.token


def api_status(cluster, token: str) -> int:
    """The apiserver's answer to a plain API call made with `token`."""
    host = cluster["api"].configuration.host
    request = urllib.request.Request(
        f"{host}/api/v1/namespaces/{NS}/pods", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=ssl._create_unverified_context()) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def chart(cluster):
    """The chart's progress objects rendered against the cluster; its ClusterRole applied."""
    objs = render_against(cluster)
    kubectl_apply(
        cluster, objs[("ClusterRole", "dmlt-operator")], objs[("Secret", "dmlt-operator-progress-tls")]
    )
    return objs


@pytest.fixture(scope="module")
def receiver(cluster, chart, tmp_path_factory):
    from kubernetes import config

    tls = make_tls(tmp_path_factory.mktemp("progress-tls"))
    # The operator's identity (the chart's ServiceAccount), with the chart's RBAC.
    api = config.new_client_from_config(config_file=str(cluster["op_kubeconfig"]))
    running = ps.serve(ProgressApi(api), 0, ps.tls_context(tls.cert, tls.key), host="127.0.0.1")
    yield running, tls
    running.stop()


def post(running, tls, path: str, token: str, body: dict) -> int:
    request = urllib.request.Request(
        f"https://localhost:{running.port}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(
            request, timeout=10, context=ssl.create_default_context(cadata=tls.ca_pem)
        ) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def epoch(n: int, epochs: int = 4) -> dict:
    return {"event": "epoch", "epoch": n, "epochs": epochs, "metrics": {"val_auc": 0.75}, "mlflow_run_id": "r1",
            "attempt": 0}  # fmt: skip


def test_the_chart_grants_tokenreviews_and_keeps_its_generated_certificate(cluster, chart):
    secret = chart[("Secret", "dmlt-operator-progress-tls")]
    pem = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    # The serving certificate is the CA's, for the Service's DNS name.
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem["tls.crt"].encode())
    ca = x509.load_pem_x509_certificate(pem["ca.crt"].encode())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert "dmlt-operator-progress.dmlt.svc" in names
    dep = chart[("Deployment", "dmlt-operator")]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in dep["containers"][0]["env"]}
    assert env["DMLT_PROGRESS_SERVICE_URL"] == "https://dmlt-operator-progress.dmlt.svc:8443"
    # An upgrade renders the same certificate (lookup), not a new CA that would strand running jobs.
    assert render_against(cluster)[("Secret", "dmlt-operator-progress-tls")]["data"] == secret["data"]
    rules = chart[("ClusterRole", "dmlt-operator")]["rules"]
    assert {
        "apiGroups": ["authentication.k8s.io"],
        "resources": ["tokenreviews"],
        "verbs": ["create"],
    } in rules
    assert not any("pods/log" in r["resources"] for r in rules)


def test_only_the_jobs_own_rank0_token_reports_its_progress(cluster, receiver):
    running, tls = receiver
    uid = create_job(cluster, "pj")
    other_uid = create_job(cluster, "other")
    aud = progress_audience(NS, "pj", uid)
    path = progress_path(NS, "pj", uid)
    pods = {name: make_pod(cluster, name) for name in ("pj-0", "pj-1", "other-0")}
    good = pod_token(cluster, aud, "pj-0", pods["pj-0"])

    # A credential the apiserver does not accept: 401 for its own API (a token of the
    # apiserver's own audience is authenticated, then refused by RBAC: 403).
    assert api_status(cluster, good) == 401
    plain = cluster["core"].create_namespaced_service_account_token(
        "default", NS, {"spec": {"expirationSeconds": 3600}}).status.token  # fmt: skip
    assert api_status(cluster, plain) == 403

    # Refused: another job's audience, the right audience from another job's Pod or another
    # rank, a token of the apiserver's audience, garbage.
    refused = {
        "other audience": pod_token(
            cluster, progress_audience(NS, "other", other_uid), "other-0", pods["other-0"]
        ),
        "another job's pod": pod_token(cluster, aud, "other-0", pods["other-0"]),
        "rank 1": pod_token(cluster, aud, "pj-1", pods["pj-1"]),
        "apiserver audience": plain,
        "garbage": "garbage",
    }
    assert {
        what: post(running, tls, path, token, epoch(1)) for what, token in refused.items()
    } == dict.fromkeys(refused, 403)
    assert "progress" not in get_job(cluster, "pj").get("status", {})

    # Accepted, through the trainer's own client: the status carries the epoch.
    token_file = Path(tls.dir) / "token"
    token_file.write_text(good)
    url = f"https://localhost:{running.port}{path}"
    pusher = ProgressPusher(https_sender(url, tls.ca_pem), str(token_file))
    pusher.submit(epoch(2))
    wait_until(lambda: get_job(cluster, "pj").get("status", {}).get("progress", {}).get("epoch") == 2, 10,
               "status.progress from the push")  # fmt: skip
    pusher.close()
    status = get_job(cluster, "pj")["status"]
    assert status["progress"] == {"epoch": 2, "epochs": 4, "summary": "2/4", "percent": 50}
    assert status["metrics"] == {"val_auc": 0.75} and status["mlflowRunId"] == "r1"
    assert pusher.failed == 0
    assert post(running, tls, path, good, epoch(1)) == 409  # stale
    assert get_job(cluster, "other").get("status", {}).get("progress") is None

    # A bound token dies with its Pod (a fresh review, past the cache, says so).
    cluster["core"].delete_namespaced_pod("pj-0", NS)
    wait_until(lambda: not any(p.metadata.name == "pj-0" for p in cluster["core"].list_namespaced_pod(NS).items),
               20, "pj-0 to be gone")  # fmt: skip
    # (the apiserver checks the Pod in its informer cache: a moment later).
    key = ps.JobKey(NS, "pj", uid)
    wait_until(lambda: ps.TokenVerifier(running.verifier.kube).check(good, key) is not None, 20,
               "the deleted Pod's token to be refused")  # fmt: skip


def test_a_job_recreated_under_its_name_is_not_written_by_the_old_ones_token(cluster, receiver):
    running, tls = receiver
    old_uid = create_job(cluster, "rj")
    token = pod_token(cluster, progress_audience(NS, "rj", old_uid), "rj-0", make_pod(cluster, "rj-0"))
    cluster["custom"].delete_namespaced_custom_object("dmlt.io", "v1alpha1", NS, "trainingjobs", "rj")
    wait_until(lambda: job_gone(cluster, "rj"), 20, "rj to be deleted")
    create_job(cluster, "rj")
    writes = running.writer.writes
    assert post(running, tls, progress_path(NS, "rj", old_uid), token, epoch(3)) == 202
    wait_until(lambda: running.writer.writes > writes, 10, "the write attempt")
    time.sleep(0.2)
    assert "progress" not in get_job(cluster, "rj").get("status", {})  # the uid precondition held


def finished_message(rank: int) -> str:
    return json.dumps({"event": "finished", "rank": rank, "world_size": 2, "status": "completed",
                       "weights_sha256": "d" * 64, "mlflow_run_id": "r9"})  # fmt: skip


def play_pod(cluster, pod: str, state: str) -> None:
    """A kubelet's Pod status; a finished container leaves the trainer's termination message."""
    now = "2026-01-01T00:00:00Z"
    container = {
        "name": "trainer",
        "image": "x",
        "imageID": "",
        "restartCount": 0,
        "ready": state == "running",
    }
    if state == "running":
        phase, container["state"] = "Running", {"running": {"startedAt": now}}
    else:
        rank = int(pod.rsplit("-", 1)[1])
        phase, container["state"] = "Succeeded", {"terminated": {
            "exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now,
            "message": finished_message(rank)}}  # fmt: skip
    ready = "True" if state == "running" else "False"
    cluster["core"].patch_namespaced_pod_status(pod, NS, {"status": {
        "phase": phase, "conditions": [{"type": "Ready", "status": ready}], "containerStatuses": [container]}})  # fmt: skip


def test_the_operator_serves_progress_and_finishes_jobs_from_termination_messages(cluster, chart, tmp_path):
    """The operator process with its receiver on and the chart's RBAC, which has no pods/log:
    rank 0 gets the token and URL, a push shows in status, and the job succeeds with every
    rank's result from its termination message, no log read."""
    from tests.helpers.apiserver import Operator, wait_phase, wait_pods
    from tests.helpers.control_plane import free_port

    tls = make_tls(tmp_path / "tls")
    port = free_port()
    op = Operator(cluster, "progress-operator", DMLT_PROGRESS_SERVICE_URL="https://dmlt-operator-progress.dmlt.svc:8443",
                  DMLT_PROGRESS_TLS_DIR=str(tls.dir), DMLT_PROGRESS_PORT=str(port))  # fmt: skip
    op.start()
    try:
        apply_job(cluster, "ej")
        wait_pods(cluster, "ej", 2, 0)
        uid = get_job(cluster, "ej")["metadata"]["uid"]
        pods = {
            p.metadata.name: p
            for p in cluster["core"].list_namespaced_pod(NS, label_selector="dmlt.io/job-name=ej").items
        }
        rank0 = pods["ej-0"].spec
        (volume,) = [v for v in rank0.volumes if v.projected is not None]
        assert volume.projected.sources[0].service_account_token.audience == progress_audience(NS, "ej", uid)
        env = {e.name: e.value for e in rank0.containers[0].env}
        assert env["DMLT_PROGRESS_URL"] == "https://dmlt-operator-progress.dmlt.svc:8443" + progress_path(
            NS, "ej", uid
        )
        assert env["DMLT_PROGRESS_CA"] == tls.ca_pem.strip()
        assert rank0.automount_service_account_token is False
        assert not any(v.projected for v in pods["ej-1"].spec.volumes)

        for name in ("ej-0", "ej-1"):
            play_pod(cluster, name, "running")
        wait_phase(cluster, "ej", "Running")
        token = pod_token(cluster, progress_audience(NS, "ej", uid), "ej-0", pods["ej-0"].metadata.uid)
        running = type("R", (), {"port": port})
        assert post(running, tls, progress_path(NS, "ej", uid), token, epoch(3)) == 202
        wait_until(
            lambda: get_job(cluster, "ej")["status"].get("progress", {}).get("epoch") == 3, 10, "progress"
        )
        time.sleep(2)  # a few reconciles: they keep what the receiver wrote
        assert get_job(cluster, "ej")["status"]["progress"]["summary"] == "3/4"

        for name in ("ej-0", "ej-1"):
            play_pod(cluster, name, "succeeded")
        status = wait_phase(cluster, "ej", "Succeeded")["status"]
        assert status["result"] == "completed" and status["mlflowRunId"] == "r9"
        assert [r["result"]["weightsSha256"] for r in status["ranks"]] == ["d" * 64] * 2
        assert "Cannot read the log" not in op.log_text()
    finally:
        op.stop()
