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
from benchmarks.scale.observe import KubeHttp, Watcher  # noqa: E402
from benchmarks.scale.operator_process import start_operator  # noqa: E402
from benchmarks.scale.report import render_table  # noqa: E402
from tests.helpers.control_plane import ADMIN_TOKEN, OPERATOR_TOKEN, SA_USER, ControlPlane, wait_until  # noqa: E402

RESULTS = HERE / "results" / "scale.json"
NAMESPACE = "scale"
RANKS = 2
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
    args = p.parse_args(argv)
    args.jobs = args.jobs or [20]
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
        # The simulated nodes' health is not measured here: a kwok starved of CPU on a busy
        # machine must not get its nodes tainted and their Pods evicted in the middle of a run.
        disabled=["node-lifecycle-controller"],
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


def _steady_window(plane: ControlPlane, http: KubeHttp, pid: int, seconds: float) -> dict[str, Any]:
    metrics_before = http.get_text("/metrics")
    cpu_before, start = procstat.cpu_seconds(pid), time.time()
    time.sleep(seconds)
    cpu_after, end = procstat.cpu_seconds(pid), time.time()
    metrics_after = http.get_text("/metrics")
    with open(plane.work / "audit.log") as f:
        lines = f.readlines()
    by_kind = audit.requests_in_window(lines, SA_USER, start, end)
    codes = audit.response_codes_in_window(lines, SA_USER, start, end)
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


def run_once(jobs: int, nodes: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    policy = work / "audit-policy.yaml"
    policy.write_text(json.dumps(AUDIT_POLICY))
    audit_args = [f"--audit-policy-file={policy}", f"--audit-log-path={work / 'audit.log'}",
                  "--audit-log-maxsize=0"]  # fmt: skip
    entry: dict[str, Any] = {"jobs": jobs, "nodes": nodes, "ranks": RANKS}
    with ControlPlane(work, tokens=[OPERATOR_TOKEN], apiserver_args=audit_args) as plane:
        _prepare(plane, nodes, args.timeout)
        job_file = work / "jobs.yaml"
        job_file.write_text(manifest(scale_jobs(jobs, NAMESPACE, example_job())))
        print(f"[{jobs} jobs] baseline apply, operator stopped", file=sys.stderr)
        entry["apply_operator_stopped_s"] = _kubectl_timed(plane, "apply", "-f", str(job_file))
        _kubectl_timed(plane, "delete", "trainingjobs", "--all", "-n", NAMESPACE, "--wait=true",
                       f"--timeout={int(args.timeout)}s")  # fmt: skip

        http = KubeHttp(plane.server, ADMIN_TOKEN)
        watcher = Watcher(http, NAMESPACE).start()
        tl = watcher.timeline
        pid = start_operator(plane, plane.kubeconfig(OPERATOR_TOKEN.token, "operator"), dict(os.environ))
        print(f"[{jobs} jobs] operator up (pid {pid}); applying", file=sys.stderr)
        cpu_start, t0 = procstat.cpu_seconds(pid), time.monotonic()
        entry["apply_s"] = _kubectl_timed(plane, "apply", "-f", str(job_file))
        entry["pods_created_s"], pods = _seconds_until(
            "rank Pods", lambda: tl.count(lambda t: len(t.pod_created)), RANKS * jobs, t0, args.timeout
        )
        entry["pods_created_s_reached"] = pods // RANKS
        entry["all_running_s"], entry["all_running_s_reached"] = _seconds_until(
            "phase Running", lambda: tl.count(lambda t: len(t.job_running)), jobs, t0, args.timeout
        )
        entry["operator_cpu_start_s"] = procstat.cpu_seconds(pid) - cpu_start
        with tl.lock:
            pod_running, job_running = dict(tl.pod_running), dict(tl.job_running)
        lags = stats.running_lags(job_running, tl.pods_of_jobs(), pod_running, RANKS)
        entry["lag_s"] = stats.summary(list(lags.values()))
        print(f"[{jobs} jobs] all Running after {entry['all_running_s']}; steady window", file=sys.stderr)

        time.sleep(args.settle)
        entry["steady"] = _steady_window(plane, http, pid, args.steady)
        entry["steady"]["jobs_running"] = tl.count(lambda t: len(t.job_running))

        print(f"[{jobs} jobs] deleting", file=sys.stderr)
        t_del = time.monotonic()
        _kubectl_timed(plane, "delete", "trainingjobs", "--all", "-n", NAMESPACE, "--wait=false")
        jobs_gone, jobs_reached = _seconds_until(
            "jobs gone", lambda: tl.count(lambda t: len(t.job_gone)), jobs, t_del, args.timeout
        )
        pods_gone, pods_reached = _seconds_until(
            "Pods gone", lambda: tl.count(lambda t: len(t.pod_gone)), RANKS * jobs, t_del, args.timeout
        )
        entry["delete"] = {"jobs_gone_s": jobs_gone, "jobs_gone_reached": jobs_reached,
                           "pods_gone_s": pods_gone, "pods_gone_reached": pods_reached // RANKS}  # fmt: skip
        entry["operator_peak_rss_mb"] = procstat.peak_rss_mb(pid)
        watcher.stop()
    return entry


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
    kwok_version = kwok_dir().name
    entries = []
    for jobs in args.jobs:
        work = Path(tempfile.mkdtemp(prefix=f"bench-scale-{jobs}-"))
        print(f"[{jobs} jobs] work directory {work}", file=sys.stderr)
        entry = run_once(jobs, args.nodes, args, work)
        entry.update(
            date=datetime.now(UTC).isoformat(timespec="seconds"),
            commit=_git_commit(),
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
