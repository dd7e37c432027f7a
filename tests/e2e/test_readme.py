"""README.md's "On Kubernetes" section, run as written, on a real cluster; then the two UIs it
points at, in a real browser.

The module reads the section's shell blocks from README.md itself and runs them with bash, with
the environment `eval "$(hack/cluster.sh env)"` gives (or the environment's KUBECONFIG on kind):
`helm install …` with the chart's defaults, `kubectl apply -f examples/ddp.yaml`,
`kubectl get tj`, the tuning example. It then checks what a reader would look at:

- the TrainingJob reaches Succeeded, and `kubectl get tj` shows its progress and val AUC;
- the TuningStudy reaches Succeeded, with its best trial in status and in `kubectl get ts`;
- the in-cluster MLflow server holds the job's run with per-epoch metrics, and the study's
  parent run with a child run per trial;
- the section's `kubectl port-forward` lines, run in the background, serve MLflow's UI (the
  job's run with its metric charts) and optuna-dashboard (the study with its trials) to headless
  Chromium; the screenshots are kept under test-artifacts/.

Afterwards it deletes the examples, uninstalls the release and deletes its namespace, so the
other e2e modules (which install their own releases) run before or after it in one session.
The job and the study run at the same time; together about 10-15 minutes on two cores.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.helpers.browser import chromium_page, port_forward, screenshot
from tests.helpers.chart import Dmlt, check_no_other_operator, clear_stale_cluster_objects
from tests.helpers.helm_binary import require_helm
from tests.helpers.kube import describe_namespace_pods, require_default_storage_class
from tests.helpers.mlflow import mlflow_get, mlflow_search_runs
from tests.helpers.names import EXAMPLE, STUDY_EXAMPLE
from tests.helpers.readme import (
    Shell,
    commands,
    is_env_block,
    is_port_forward_block,
    option,
    reader_env,
    section_blocks,
)

pytestmark = pytest.mark.e2e

SECTION = "On Kubernetes"
TIMEOUT = float(os.environ.get("DMLT_E2E_README_TIMEOUT", "2400"))
"""Seconds for the example job and the example study (they run at once) to finish."""


@dataclass
class Readme:
    """What the section's commands set up, read from the commands themselves."""

    shell: Shell
    release: str
    chart_ns: str
    job_ns: str
    job: str
    study_ns: str
    study: str
    port_forwards: list[list[str]]
    dmlt: Dmlt
    printed: list[str] = field(default_factory=list)

    def get(self, kind: str, name: str, ns: str) -> dict[str, Any]:
        return json.loads(self.shell.kubectl("get", kind, name, "-n", ns, "-o", "json"))


def _names(doc_path, kind: str) -> str:
    (doc,) = [d for d in yaml.safe_load_all(doc_path.read_text()) if d and d.get("kind") == kind]
    return doc["metadata"]["name"]


def _command(blocks: list[str], *words: str) -> list[str]:
    found = [c for b in blocks for c in commands(b) if all(w in c for w in words)]
    assert len(found) == 1, f"README's '{SECTION}' should have one `{' '.join(words)}` line: {found}"
    return found[0]


def _context_namespace(shell: Shell) -> str:
    out = shell.kubectl("config", "view", "--minify", "-o", "jsonpath={..namespace}").strip()
    return out or "default"


def _cleanup(readme: Readme) -> list[str]:
    """Delete the examples (the operator drops their finalizers), uninstall, drop the namespace
    (the chart's claims are kept by `helm uninstall`; the namespace takes them)."""
    steps = [
        ["kubectl", "delete", "tuningstudy", readme.study, "-n", readme.study_ns, "--ignore-not-found",
         "--timeout=300s"],
        ["kubectl", "delete", "-n", readme.job_ns, "-f", str(EXAMPLE), "--ignore-not-found",
         "--timeout=300s"],
        ["helm", "uninstall", readme.release, "-n", readme.chart_ns, "--wait", "--timeout", "5m"],
        ["kubectl", "delete", "namespace", readme.chart_ns, "--ignore-not-found", "--timeout=300s"],
    ]  # fmt: skip
    problems = []
    for step in steps:
        try:
            readme.shell.run(shlex.join(step), timeout=360)
        except (AssertionError, OSError) as exc:
            problems.append(str(exc))
    return problems


@pytest.fixture(scope="module")
def readme(api_client: client.ApiClient) -> Iterator[Readme]:
    blocks = section_blocks(SECTION)
    assert any(is_env_block(b) for b in blocks), f"README's '{SECTION}' lost its `eval` line"
    shell = Shell(reader_env())
    install = _command(blocks, "helm", "install")
    release, chart_ns = install[2], option(install, "--namespace", "-n")
    assert chart_ns, f"the README's helm install names no namespace: {install}"
    job_apply = _command(blocks, "kubectl", "apply", "examples/ddp.yaml")
    study_apply = _command(blocks, "kubectl", "apply", "examples/tuning.yaml")
    default_ns = _context_namespace(shell)
    storage_class = require_default_storage_class(api_client)
    check_no_other_operator(api_client, chart_ns)
    clear_stale_cluster_objects(api_client, release)
    present = shell.kubectl("get", "namespace", "-o", "name")
    assert f"namespace/{chart_ns}\n" not in present, (
        f"namespace {chart_ns} exists already: `helm uninstall {release} -n {chart_ns}` and "
        f"`kubectl delete namespace {chart_ns}` first (the README installs into a fresh one)"
    )
    readme = Readme(
        shell=shell,
        release=release,
        chart_ns=chart_ns,
        job_ns=option(job_apply, "--namespace", "-n") or default_ns,
        job=_names(EXAMPLE, "TrainingJob"),
        study_ns=option(study_apply, "--namespace", "-n") or default_ns,
        study=_names(STUDY_EXAMPLE, "TuningStudy"),
        port_forwards=[c for b in blocks if is_port_forward_block(b) for c in commands(b)],
        dmlt=Dmlt(api_client, chart_ns, release, require_helm(), storage_class),
    )
    started = time.monotonic()
    try:
        for block in blocks:
            if is_env_block(block) or is_port_forward_block(block):
                continue  # the environment is the reader's already; port-forwards run in the UI test
            readme.printed.append(shell.run(block, timeout=900))
            print(f"+{time.monotonic() - started:.0f}s ran:\n{block}{readme.printed[-1]}")
        yield readme
    finally:
        problems = _cleanup(readme)
        print(f"README cleanup: {'; '.join(problems) or 'done'} (+{time.monotonic() - started:.0f}s in all)")


def _wait_phase(readme: Readme, kind: str, name: str, ns: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    seen: list[str] = []
    while True:
        obj = readme.get(kind, name, ns)
        status = obj.get("status") or {}
        line = f"{status.get('phase')} {status.get('message', '')}"
        if not seen or seen[-1] != line:
            seen.append(line)
        if status.get("phase") in ("Succeeded", "Failed"):
            assert status["phase"] == "Succeeded", (
                f"{kind} {ns}/{name} Failed:\n" + "\n".join(seen) + "\n"
                + describe_namespace_pods(readme.dmlt.core, ns)
            )  # fmt: skip
            return obj
        assert time.monotonic() < deadline, (
            f"{kind} {ns}/{name} not finished after {TIMEOUT:.0f}s; states:\n" + "\n".join(seen) + "\n"
            + describe_namespace_pods(readme.dmlt.core, ns)
        )  # fmt: skip
        time.sleep(5)


@pytest.fixture(scope="module")
def finished_job(readme: Readme) -> dict[str, Any]:
    return _wait_phase(readme, "trainingjob", readme.job, readme.job_ns)


@pytest.fixture(scope="module")
def finished_study(readme: Readme) -> dict[str, Any]:
    return _wait_phase(readme, "tuningstudy", readme.study, readme.study_ns)


def _table(text: str) -> list[dict[str, str]]:
    """`kubectl get` output as rows of {column: cell} (columns are 2+ spaces apart)."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"(?:(?<=\s\s)|^)\S", header)]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return [
        {n: line[a:b].strip() for n, a, b in zip(names, starts, [*starts[1:], None], strict=True)}
        for line in lines[1:]
    ]


def _epochs(example_path, kind: str) -> int:
    (doc,) = [d for d in yaml.safe_load_all(example_path.read_text()) if d and d.get("kind") == kind]
    spec = doc["spec"]
    return (spec.get("trialTemplate") or spec)["trainer"]["epochs"]


@pytest.mark.timeout(int(TIMEOUT) + 1800)
def test_readme_job_succeeds_with_progress_and_val_auc(readme: Readme, finished_job: dict[str, Any]) -> None:
    epochs = _epochs(EXAMPLE, "TrainingJob")
    (row,) = [
        r for r in _table(readme.shell.kubectl("get", "tj", "-n", readme.job_ns)) if r["NAME"] == readme.job
    ]
    print(f"kubectl get tj: {row}")
    assert row["PHASE"] == "Succeeded" and row["PROGRESS"] == f"{epochs}/{epochs}", row
    assert 0.5 < float(row["VAL-AUC"]) <= 1.0, row

    status = finished_job["status"]
    run_id = status["mlflowRunId"]
    run = mlflow_get(readme.dmlt, "api/2.0/mlflow/runs/get", {"run_id": run_id})["run"]
    assert run["info"]["status"] == "FINISHED", run["info"]
    for key in ("val_auc", "train_loss"):
        history = mlflow_get(
            readme.dmlt, "api/2.0/mlflow/metrics/get-history", {"run_id": run_id, "metric_key": key}
        )
        steps = sorted(m["step"] for m in history.get("metrics", []))
        assert steps == list(range(epochs)), f"MLflow {key} of run {run_id}: steps {steps}"


@pytest.mark.timeout(int(TIMEOUT) + 1800)
def test_readme_study_succeeds_with_best_trial_and_child_runs(
    readme: Readme, finished_study: dict[str, Any]
) -> None:
    status = finished_study["status"]
    best = status["bestTrial"]
    assert best["params"] and best["trainingJob"] == f"{readme.study}-t{best['number']}", best
    (row,) = [
        r
        for r in _table(readme.shell.kubectl("get", "ts", "-n", readme.study_ns))
        if r["NAME"] == readme.study
    ]
    print(f"kubectl get ts: {row}")
    assert row["PHASE"] == "Succeeded" and float(row["BEST"]) == pytest.approx(best["value"], rel=1e-6), row

    parent = status["parentRunId"]
    parent_run = mlflow_get(readme.dmlt, "api/2.0/mlflow/runs/get", {"run_id": parent})["run"]
    children = mlflow_search_runs(
        readme.dmlt, [parent_run["info"]["experiment_id"]], f"tags.mlflow.parentRunId = '{parent}'"
    )
    finished = status["trials"]["completed"] + status["trials"]["pruned"]
    assert len(children) >= finished, f"{len(children)} child runs of {parent} for {finished} finished trials"
    assert best["mlflowRunId"] in {r["info"]["run_id"] for r in children}, best


@pytest.mark.timeout(int(TIMEOUT) + 1800)
def test_readme_uis_show_the_run_and_the_study(
    readme: Readme, finished_job: dict[str, Any], finished_study: dict[str, Any]
) -> None:
    mlflow_cmd = next((c for c in readme.port_forwards if any("mlflow" in w for w in c)), None)
    dashboard_cmd = next((c for c in readme.port_forwards if any("dashboard" in w for w in c)), None)
    assert mlflow_cmd and dashboard_cmd, f"README's port-forward lines: {readme.port_forwards}"
    run_id = finished_job["status"]["mlflowRunId"]
    run = mlflow_get(readme.dmlt, "api/2.0/mlflow/runs/get", {"run_id": run_id})["run"]
    experiment = run["info"]["experiment_id"]
    best = finished_study["status"]["bestTrial"]
    trials = finished_study["status"]["trials"]
    n_trials = trials["completed"] + trials["pruned"] + trials["failed"]
    env = readme.shell.env
    started = time.monotonic()
    with chromium_page() as page:
        with port_forward(mlflow_cmd, env) as url:
            page.goto(f"{url}/#/experiments/{experiment}/runs/{run_id}/model-metrics", timeout=120_000)
            page.get_by_text(run["info"]["run_name"]).first.wait_for(timeout=120_000)
            page.get_by_placeholder("Search metric charts").fill("val_")  # the validation charts
            page.get_by_text("val_auc", exact=True).first.wait_for(timeout=120_000)
            # A chart is drawn: MLflow's plotly plots (an SVG with the metric's line).
            page.wait_for_selector(".js-plotly-plot .scatterlayer path", timeout=120_000)
            time.sleep(2)
            screenshot(page, "mlflow-run")
        with port_forward(dashboard_cmd, env) as url:
            page.goto(f"{url}/dashboard", timeout=120_000)
            page.get_by_text(readme.study, exact=False).first.click(timeout=120_000)
            page.get_by_text(f"Best Trial (number={best['number']})").first.wait_for(timeout=120_000)
            page.wait_for_selector(".js-plotly-plot", timeout=120_000)
            time.sleep(2)
            screenshot(page, "optuna-dashboard")
            page.goto(page.url.rstrip("/") + "/trials", timeout=120_000)
            page.get_by_text(f"{n_trials} Trials").first.wait_for(timeout=120_000)
            for number in range(n_trials):
                page.get_by_text(f"Trial {number}", exact=True).first.wait_for(timeout=30_000)
            screenshot(page, "optuna-dashboard-trials")
    print(f"UIs checked in {time.monotonic() - started:.0f}s")
