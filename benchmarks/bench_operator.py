"""Operator benchmark: how fast a TrainingJob starts, and whether consecutive jobs start cleanly.

Applies N small TrainingJobs one after another (2 ranks, gloo, 1 epoch of 5000 samples: the
training itself is a second or two), each to completion, and measures per job:

- apply → all ranks Running: the create call returns, until every rank's Pod has its trainer
  container started (Pods polled every 0.25 s by this script);
- apply → phase Running: until the operator's status says Running (polled every 0.25 s);
- apply → first training step: rank 0's first `{"event": "epoch"}` line, timestamped by the
  kubelet (`kubectl logs --timestamps`), minus the epoch's own `epoch_time_s` and
  `eval_time_s`: when the first batch started. Also reported: the epoch line itself;
- apply → Succeeded;
- gang restarts (status.restarts) and container restarts: the target is 0 across all jobs,
  i.e. no DNS or rendezvous race ever failed a rank.

The apply time is this machine's clock and the log timestamps the node's; on the local cluster
(`hack/cluster.sh`) they are the same clock.

Usage:
  KUBECONFIG=$(hack/cluster.sh kubeconfig) python benchmarks/bench_operator.py [--jobs 20]
      [--namespace NS]      # use the operator already serving NS instead of installing the chart
      [--replicas 2] [--samples 5000] [--epochs 1] [--timeout 600] [--out PATH]

Without --namespace the chart is installed with helm into a fresh namespace (as the e2e tests
do) and removed afterwards. Writes benchmarks/results/operator.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from kubernetes import client, config  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

from tests.helpers.chart import Dmlt, install  # noqa: E402
from tests.helpers.helm_binary import find_helm  # noqa: E402
from tests.helpers.jobs import diagnose, job_manifest, pods_by_rank  # noqa: E402
from tests.helpers.kube import timestamped_events, try_pod_log  # noqa: E402
from tests.helpers.names import TRAINER_CONTAINER  # noqa: E402
from tests.helpers.waiting import wait_for  # noqa: E402

RESULTS = HERE / "results" / "operator.json"
POLL_S = 0.25

METRICS = [
    ("apply_to_pods_created_s", "apply → all rank Pods created"),
    ("apply_to_all_ranks_running_s", "apply → all ranks Running (containers started)"),
    ("apply_to_phase_running_s", "apply → status.phase Running"),
    ("apply_to_first_step_s", "apply → first training step (rank 0)"),
    ("apply_to_first_epoch_line_s", "apply → first epoch line (rank 0)"),
    ("apply_to_succeeded_s", "apply → Succeeded"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=20, help="consecutive jobs (default 20; medians need >= 10)")
    p.add_argument("--namespace", help="run in this namespace, served by an operator already installed")
    p.add_argument("--replicas", type=int, default=2, help="ranks per job (default 2)")
    p.add_argument("--samples", type=int, default=5000, help="trainer nSamples (default 5000)")
    p.add_argument("--epochs", type=int, default=1, help="trainer epochs (default 1)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per job until Succeeded")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    return p.parse_args(argv)


def connect() -> client.ApiClient:
    try:
        config.load_kube_config()
    except Exception as exc:  # noqa: BLE001
        sys.exit(f"no cluster in KUBECONFIG={os.environ.get('KUBECONFIG')!r}: {exc}")
    api = client.ApiClient()
    try:
        client.VersionApi(api).get_code(_request_timeout=10)
    except Exception as exc:  # noqa: BLE001
        sys.exit(f"cluster in KUBECONFIG={os.environ.get('KUBECONFIG')!r} not reachable: {exc}")
    return api


def _started(pod: client.V1Pod) -> bool:
    for cs in pod.status.container_statuses or []:
        if cs.name == TRAINER_CONTAINER and cs.state and (cs.state.running or cs.state.terminated):
            return True
    return False


def _container_started_at(pod: client.V1Pod) -> datetime | None:
    for cs in pod.status.container_statuses or []:
        if cs.name != TRAINER_CONTAINER or not cs.state:
            continue
        if cs.state.running:
            return cs.state.running.started_at
        if cs.state.terminated:
            return cs.state.terminated.started_at
    return None


def run_job(dmlt: Dmlt, name: str, args: argparse.Namespace) -> dict[str, Any]:
    trainer = {
        "dataset": "synthetic",
        "nSamples": args.samples,
        "epochs": args.epochs,
        "batchSize": 256,
        "hiddenDims": [64, 32],
        "dropout": 0.1,
    }
    manifest = job_manifest(
        name,
        trainer=trainer,
        checkpoint={"emptyDir": {}},
        run_policy={"cleanPodPolicy": "Running"},
        replicas=args.replicas,
    )
    row: dict[str, Any] = {"job": name}
    apply_wall = time.time()
    t0 = time.monotonic()
    dmlt.create_job(manifest)
    deadline = t0 + args.timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        now = time.monotonic() - t0
        pods = dmlt.pods(name)
        if "apply_to_pods_created_s" not in row and len(pods) >= args.replicas:
            row["apply_to_pods_created_s"] = now
        if (
            "apply_to_all_ranks_running_s" not in row
            and len(pods) >= args.replicas
            and all(_started(p) for p in pods)
        ):
            row["apply_to_all_ranks_running_s"] = now
        job = dmlt.get_job(name) or {}
        status = job.get("status") or {}
        phase = status.get("phase")
        if phase in ("Running", "Succeeded") and "apply_to_phase_running_s" not in row:
            row["apply_to_phase_running_s"] = now
        if phase in ("Succeeded", "Failed"):
            row["apply_to_succeeded_s" if phase == "Succeeded" else "apply_to_failed_s"] = now
            break
        time.sleep(POLL_S)
    else:
        row["timed_out"] = True
    row["phase"] = status.get("phase")
    row["message"] = status.get("message")
    row["restarts"] = int(status.get("restarts") or 0)
    row["attempt"] = int(status.get("attempt") or 0)

    pods = pods_by_rank(dmlt.pods(name))
    row["container_restarts"] = sum(
        cs.restart_count for p in pods.values() for cs in p.status.container_statuses or []
    )
    starts = [s for s in (_container_started_at(p) for p in pods.values()) if s is not None]
    if len(starts) == args.replicas:
        row["apply_to_last_container_start_s"] = max(s.timestamp() for s in starts) - apply_wall
    if 0 in pods:
        log = try_pod_log(dmlt.core, dmlt.namespace, pods[0].metadata.name, timestamps=True)
        epochs = timestamped_events(log, "epoch")
        if epochs:
            stamp, event = epochs[0]
            metrics = event.get("metrics") or {}
            line_s = stamp.timestamp() - apply_wall
            row["apply_to_first_epoch_line_s"] = line_s
            row["apply_to_first_step_s"] = (
                line_s - float(metrics.get("epoch_time_s") or 0) - float(metrics.get("eval_time_s") or 0)
            )
            row["first_epoch_time_s"] = metrics.get("epoch_time_s")
    if row.get("phase") != "Succeeded":
        row["diagnosis"] = diagnose(dmlt, name)

    dmlt.delete_job(name)
    wait_for(
        lambda: dmlt.get_job(name) is None and not dmlt.pods(name),
        180,
        f"job {name} and its Pods to be deleted",
    )
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, _ in METRICS:
        values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if values:
            out[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "n": len(values),
            }
    out["jobs"] = len(rows)
    out["succeeded"] = sum(1 for r in rows if r.get("phase") == "Succeeded")
    out["gang_restarts_total"] = sum(r.get("restarts", 0) for r in rows)
    out["container_restarts_total"] = sum(r.get("container_restarts", 0) for r in rows)
    out["jobs_with_restarts"] = sum(1 for r in rows if r.get("restarts") or r.get("container_restarts"))
    return out


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| metric | median | min | max | n |", "|---|---|---|---|---|"]
    for key, label in METRICS:
        s = summary.get(key)
        if s:
            lines.append(
                f"| {label} | {s['median']:.1f} s | {s['min']:.1f} s | {s['max']:.1f} s | {s['n']} |"
            )
    lines.append(
        f"| gang restarts across {summary['jobs']} consecutive jobs (target 0) | "
        f"{summary['gang_restarts_total']} | | | {summary['jobs']} |"
    )
    lines.append(
        f"| container restarts across {summary['jobs']} jobs | {summary['container_restarts_total']} | | | |"
    )
    lines.append(f"| jobs Succeeded | {summary['succeeded']} / {summary['jobs']} | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    api = connect()
    core = client.CoreV1Api(api)
    version = client.VersionApi(api).get_code().git_version
    token = uuid.uuid4().hex[:5]
    own_namespace = args.namespace is None
    ns = args.namespace or f"bench-operator-{token}"
    dmlt: Dmlt | None = None
    rows: list[dict[str, Any]] = []
    try:
        if own_namespace:
            helm = find_helm()
            if helm is None:
                sys.exit("helm not found: set HELM, put helm on PATH, or run `bash hack/setup.sh`")
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
            wait_for(lambda: core.read_namespaced_service_account("default", ns), 60, "default SA")
            dmlt = install(api, ns, helm, release=f"dmlt-bench-{token}")
        else:
            dmlt = Dmlt(api, ns, release="", helm="", storage_class="")
        for i in range(args.jobs):
            name = f"bench-{token}-{i:02d}"
            row = run_job(dmlt, name, args)
            rows.append(row)
            print(
                f"[{i + 1}/{args.jobs}] {name}: {row.get('phase')} "
                + " ".join(f"{k}={row[k]:.1f}" for k, _ in METRICS if isinstance(row.get(k), float))
                + f" restarts={row['restarts']}",
                flush=True,
            )
            if row.get("diagnosis"):
                print(row["diagnosis"], flush=True)
    finally:
        if own_namespace and dmlt is not None:
            for problem in dmlt.teardown():
                print("teardown:", problem, file=sys.stderr)
        if own_namespace:
            try:
                core.delete_namespace(ns)
            except ApiException:
                pass
    summary = summarize(rows)
    result = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cluster": {"version": version, "node": dmlt.node if dmlt else None},
        "host": {"cores": os.cpu_count(), "machine": platform.machine()},
        "settings": {
            "jobs": args.jobs,
            "replicas": args.replicas,
            "trainer": {"nSamples": args.samples, "epochs": args.epochs, "hiddenDims": [64, 32]},
            "poll_s": POLL_S,
        },
        "summary": summary,
        "jobs": [{k: v for k, v in r.items() if k != "diagnosis"} for r in rows],
        "notes": (
            "apply = the create call returned (this machine's clock); first step = rank 0's first "
            "epoch line (kubelet log timestamp) minus that epoch's epoch_time_s and eval_time_s."
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(markdown(summary))
    print(f"\nwrote {args.out}")
    ok = summary["succeeded"] == len(rows) and summary["gang_restarts_total"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
