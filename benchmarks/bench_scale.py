"""Scale benchmark (issue 15): N two-rank TrainingJobs applied at once on kwok's simulated nodes.

Self-contained: starts its own etcd, kube-apiserver, kube-controller-manager and kube-scheduler
(from the build cache) on free loopback ports, kwok with `--nodes` fake Nodes whose Pods go
Running without containers, and the operator as a local process with the chart's settings,
authenticated as the chart's ServiceAccount user. The local cluster of hack/cluster.sh is not
touched. Then, per `--jobs` N:

1. `kubectl apply` of the N jobs (examples/ddp.yaml's, renamed, emptyDir checkpoint) with the
   operator stopped, timed, and the jobs deleted again: the baseline;
2. the operator started, the same apply timed; from its start: all 2N rank Pods created, every
   job's phase Running, and per job the lag from its last Pod Running to its phase Running
   (all as this process's watches see them), operator CPU seconds (/proc) until then;
3. after `--settle` seconds, a `--steady` second window with nothing changing: operator CPU
   cores, the operator's requests per second (the apiserver's audit log, which records the
   operator's user alone) and all clients' (apiserver_request_total);
4. all jobs deleted: time until every job is gone (finalizers removed) and every Pod is gone.

Operator peak RSS is VmHWM at the end. Writes benchmarks/results/scale.json (one entry per N,
replacing an earlier one) and prints the Markdown table of all its entries.

Usage: python -m benchmarks.bench_scale --jobs 100 [--jobs 20] [--nodes 20] [--steady 60]
Needs: bash hack/cluster/build-tools.sh k8s kwok, and etcd on PATH (Debian's etcd-server).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.scale import audit, procstat, prom, stats  # noqa: E402
from benchmarks.scale.jobs import example_job, manifest, scale_jobs  # noqa: E402
from benchmarks.scale.kwok import fake_nodes, kwok_dir, start_kwok  # noqa: E402
from benchmarks.scale.observe import KubeHttp, Timeline, Watcher  # noqa: E402
from benchmarks.scale.operator_process import start_operator  # noqa: E402
from benchmarks.scale.report import render_table  # noqa: E402
from tests.helpers.control_plane import ADMIN_TOKEN, OPERATOR_TOKEN, SA_USER, ControlPlane, wait_until  # noqa: E402

RESULTS = HERE / "results" / "scale.json"
NAMESPACE = "scale"
RANKS = 2
CHART_API_KINDS = ("Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole",
                   "ClusterRoleBinding", "Role", "RoleBinding")  # fmt: skip
"""What of the chart is applied: its CRDs and RBAC (its Deployments would start on fake nodes)."""
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["ResponseStarted", "Panic"],
    "rules": [{"level": "Metadata", "users": [SA_USER]}, {"level": "None"}],
}
"""Only the operator's requests, without bodies: one RequestReceived event per request."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, action="append", help="jobs applied at once (repeatable; default 20)")
    p.add_argument("--nodes", type=int, default=20, help="simulated nodes (default 20)")
    p.add_argument("--settle", type=float, default=15, help="seconds after all Running before the window")
    p.add_argument("--steady", type=float, default=60, help="seconds of the steady-state window (default 60)")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed for each wait (default 900)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, audit log)")
    p.add_argument("--operator-env", action="append", default=[], metavar="KEY=VALUE",
                   help="override one of the chart's operator settings, e.g. DMLT_API_QPS=100 (repeatable)")  # fmt: skip
    args = p.parse_args(argv)
    args.jobs = args.jobs or [20]
    args.operator_env = dict(kv.split("=", 1) for kv in args.operator_env)
    return args


# --------------------------------------------------------------------------- one run


def _kubectl_timed(plane: ControlPlane, *args: str) -> float:
    start = time.monotonic()
    done = subprocess.run([*plane.kubectl, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {done.stderr[-2000:]}")
    return time.monotonic() - start


def _seconds_until(
    what: str, count: Any, target: int, origin: float, timeout: float
) -> tuple[float | None, int]:
    """Seconds from `origin` (monotonic) until count() >= target, None if not within `timeout`
    of origin; and the count reached."""
    while time.monotonic() - origin < timeout:
        if count() >= target:
            return time.monotonic() - origin, target
        time.sleep(0.1)
    print(f"  timed out waiting for {what}: {count()}/{target}", file=sys.stderr)
    return None, count()


def _prepare(plane: ControlPlane, nodes: int, timeout: float) -> None:
    plane.start_controllers(
        # The simulated nodes' health is not what is measured: a kwok starved of CPU on a busy
        # machine must not get its nodes marked NotReady (and their Pods evicted) mid-run. The
        # node lifecycle controller stays on: it lifts the not-ready taint new nodes start with.
        controller_manager_args=["--node-monitor-grace-period=600s"],
    )
    start_kwok(plane)
    node_file = plane.work / "nodes.yaml"
    node_file.write_text(manifest(fake_nodes(nodes)))
    _kubectl_timed(plane, "create", "-f", str(node_file))
    _kubectl_timed(plane, "wait", "--for=condition=Ready", "node", "--all", f"--timeout={int(timeout)}s")
    _kubectl_timed(plane, "create", "namespace", NAMESPACE)
    # The controller-manager's ServiceAccount controller makes the namespace's "default".
    get_sa = [*plane.kubectl, "get", "serviceaccount", "default", "-n", NAMESPACE]
    wait_until(lambda: subprocess.run(get_sa, capture_output=True).returncode == 0, 60, "the default SA")


def _operator_requests(work: Path, start: float, end: float) -> tuple[Any, Any]:
    """The operator's requests received in [start, end) by kind, and their responses' codes."""
    with open(work / "audit.log") as f:
        lines = f.readlines()
    return (audit.requests_in_window(lines, SA_USER, start, end),
            audit.response_codes_in_window(lines, SA_USER, start, end))  # fmt: skip


def _steady_window(plane: ControlPlane, http: KubeHttp, pid: int, seconds: float) -> dict[str, Any]:
    """Operator CPU and requests, and all clients' requests, over `seconds` of nothing changing."""
    metrics_before = http.get_text("/metrics")
    cpu_before, start = procstat.cpu_seconds(pid), time.time()
    time.sleep(seconds)
    cpu_after, end = procstat.cpu_seconds(pid), time.time()
    metrics_after = http.get_text("/metrics")
    by_kind, codes = _operator_requests(plane.work, start, end)
    all_requests = prom.total(metrics_after, "apiserver_request_total") - prom.total(
        metrics_before, "apiserver_request_total"
    )
    window = end - start
    return {
        "window_s": round(window, 1),
        "operator_cores": (cpu_after - cpu_before) / window,
        "operator_requests_per_s": sum(by_kind.values()) / window,
        "operator_requests": dict(by_kind.most_common()),
        "operator_responses": dict(codes.most_common()),
        # The metrics scrapes themselves are 2 of these.
        "apiserver_requests_per_s": all_requests / window,
    }


def _baseline_apply(plane: ControlPlane, job_file: Path, timeout: float) -> float:
    """`kubectl apply` of the jobs with no operator running; the jobs are deleted again."""
    took = _kubectl_timed(plane, "apply", "-f", str(job_file))
    _kubectl_timed(plane, "delete", "trainingjobs", "--all", "-n", NAMESPACE, "--wait=true",
                   f"--timeout={int(timeout)}s")  # fmt: skip
    return took


def _start_burst(plane: ControlPlane, tl: Timeline, pid: int, job_file: Path, jobs: int,
                 timeout: float) -> dict[str, Any]:  # fmt: skip
    """Apply all jobs at once; times until all Pods exist and every job is Running, the lags."""
    out: dict[str, Any] = {}
    cpu_start, t0, wall0 = procstat.cpu_seconds(pid), time.monotonic(), time.time()
    out["apply_s"] = _kubectl_timed(plane, "apply", "-f", str(job_file))
    count_pods = lambda: tl.count(lambda t: len(t.pod_created))  # noqa: E731
    count_running = lambda: tl.count(lambda t: len(t.job_running))  # noqa: E731
    out["pods_created_s"], pods = _seconds_until("rank Pods", count_pods, RANKS * jobs, t0, timeout)
    out["pods_created_s_reached"] = pods // RANKS
    out["all_running_s"], out["all_running_s_reached"] = _seconds_until(
        "phase Running", count_running, jobs, t0, timeout
    )
    out["operator_cpu_start_s"] = procstat.cpu_seconds(pid) - cpu_start
    with tl.lock:
        pod_running, job_running = dict(tl.pod_running), dict(tl.job_running)
    lags = stats.running_lags(job_running, tl.pods_of_jobs(), pod_running, RANKS)
    out["lag_s"] = stats.summary(list(lags.values()))
    by_kind, codes = _operator_requests(plane.work, wall0, time.time())
    out["start_operator_requests"] = dict(by_kind.most_common())
    out["start_operator_responses"] = dict(codes.most_common())
    return out


def _delete_all(plane: ControlPlane, tl: Timeline, jobs: int, timeout: float) -> dict[str, Any]:
    """Delete every job at once: seconds until all are gone (finalizers removed), all Pods gone."""
    t_del = time.monotonic()
    _kubectl_timed(plane, "delete", "trainingjobs", "--all", "-n", NAMESPACE, "--wait=false")
    count_jobs = lambda: tl.count(lambda t: len(t.job_gone))  # noqa: E731
    count_pods = lambda: tl.count(lambda t: len(t.pod_gone))  # noqa: E731
    jobs_gone, jobs_reached = _seconds_until("jobs gone", count_jobs, jobs, t_del, timeout)
    pods_gone, pods_reached = _seconds_until("Pods gone", count_pods, RANKS * jobs, t_del, timeout)
    return {"jobs_gone_s": jobs_gone, "jobs_gone_reached": jobs_reached,
            "pods_gone_s": pods_gone, "pods_gone_reached": pods_reached // RANKS}  # fmt: skip


def run_once(jobs: int, nodes: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One benchmark run on a control plane of its own, in `work`."""
    policy = work / "audit-policy.yaml"
    policy.write_text(json.dumps(AUDIT_POLICY))
    audit_args = [f"--audit-policy-file={policy}", f"--audit-log-path={work / 'audit.log'}",
                  "--audit-log-maxsize=0"]  # fmt: skip
    entry: dict[str, Any] = {"jobs": jobs, "nodes": nodes, "ranks": RANKS}
    plane = ControlPlane(work, tokens=[OPERATOR_TOKEN], apiserver_args=audit_args,
                         manifest_kinds=CHART_API_KINDS)  # fmt: skip
    with plane:
        _prepare(plane, nodes, args.timeout)
        job_file = work / "jobs.yaml"
        job_file.write_text(manifest(scale_jobs(jobs, NAMESPACE, example_job())))
        _log(jobs, "baseline: kubectl apply with the operator stopped")
        entry["apply_operator_stopped_s"] = _baseline_apply(plane, job_file, args.timeout)

        http = KubeHttp(plane.server, ADMIN_TOKEN)
        watcher = Watcher(http, NAMESPACE).start()
        kubeconfig = plane.kubeconfig(OPERATOR_TOKEN.token, "operator")
        pid = start_operator(plane, kubeconfig, dict(os.environ), args.operator_env)
        if args.operator_env:
            entry["operator_env"] = args.operator_env
        _log(jobs, f"operator up (pid {pid}); applying all jobs")
        entry.update(_start_burst(plane, watcher.timeline, pid, job_file, jobs, args.timeout))
        _log(jobs, f"all Running after {entry['all_running_s']} s; steady window of {args.steady} s")
        time.sleep(args.settle)
        entry["steady"] = _steady_window(plane, http, pid, args.steady)
        entry["steady"]["jobs_running"] = watcher.timeline.count(lambda t: len(t.job_running))
        _log(jobs, "deleting all jobs")
        entry["delete"] = _delete_all(plane, watcher.timeline, jobs, args.timeout)
        entry["operator_peak_rss_mb"] = procstat.peak_rss_mb(pid)
        watcher.stop()
    return entry


def _log(jobs: int, message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S} {jobs} jobs] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- results


def _git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=False)  # fmt: skip
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                           check=False).stdout.strip()  # fmt: skip
    return done.stdout.strip() + ("-dirty" if dirty else "")


def _machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "niceness": os.nice(0)}  # fmt: skip


def save(entries: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    """Merge `entries` into the file's (one per number of jobs); all of them, ordered."""
    old = json.loads(path.read_text()).get("runs", []) if path.exists() else []
    by_jobs = {e["jobs"]: e for e in old} | {e["jobs"]: e for e in entries}
    merged = [by_jobs[k] for k in sorted(by_jobs)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": merged}, indent=2) + "\n")
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A plain SIGTERM would skip the `finally` that ends the control plane's processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    kwok_version, commit = kwok_dir().name, _git_commit()  # the code as it was at the start
    entries = []
    for jobs in args.jobs:
        work = Path(tempfile.mkdtemp(prefix=f"bench-scale-{jobs}-"))
        _log(jobs, f"work directory {work}")
        entry = run_once(jobs, args.nodes, args, work)
        entry.update(
            date=datetime.now(UTC).isoformat(timespec="seconds"),
            commit=commit,
            machine=_machine(),
            kwok=kwok_version,
            settings={"settle_s": args.settle, "steady_s": args.steady},
        )
        entries.append(entry)
        print(json.dumps(entry, indent=2), file=sys.stderr)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)
    merged = save(entries, args.out)
    print(render_table(merged))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
