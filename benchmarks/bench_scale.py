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

Study mode (`--study-parallelism P`): instead of jobs, one TuningStudy with parallelism P on a
SQLite Optuna storage (benchmarks/scale/study.py), whose trial Pods kwok completes
`--study-complete-after` seconds after they run. Times from the apply until P trial jobs exist
and until P are Running; then, until `--study-trials` trial jobs were created in all, the lag
from each trial's Pod finishing to the trial job that took its slot; operator CPU and requests
over that time; the study's deletion. Written under "studies" in scale.json (one entry per
`--label` and P).

Usage: python -m benchmarks.bench_scale --jobs 100 [--jobs 20] [--nodes 20] [--steady 60]
       python -m benchmarks.bench_scale --study-parallelism 100 --study-trials 300 --label events
Needs: bash hack/cluster/build-tools.sh k8s etcd kwok.
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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.scale import audit, floor, procstat, prom, stats  # noqa: E402
from benchmarks.scale import study as st  # noqa: E402
from benchmarks.scale.jobs import example_job, manifest, scale_jobs  # noqa: E402
from benchmarks.scale.kwok import fake_nodes, kwok_dir, start_kwok  # noqa: E402
from benchmarks.scale.observe import KubeHttp, Timeline, Watcher  # noqa: E402
from benchmarks.scale.operator_process import start_operator  # noqa: E402
from benchmarks.scale.report import render_study_table, render_table  # noqa: E402
from tests.helpers.control_plane import ADMIN_TOKEN, OPERATOR_TOKEN, SA_USER, ControlPlane, wait_until  # noqa: E402

RESULTS = HERE / "results" / "scale.json"
FLOOR_RESULTS = HERE / "results" / "scale-floor.json"
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
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON results (default {RESULTS}; in floor mode {FLOOR_RESULTS})")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, audit log)")
    p.add_argument("--operator-env", action="append", default=[], metavar="KEY=VALUE",
                   help="override one of the chart's operator settings, e.g. DMLT_API_QPS=100 (repeatable)")  # fmt: skip
    p.add_argument(
        "--study-parallelism",
        type=int,
        default=0,
        metavar="P",
        help="study mode: one TuningStudy with this parallelism instead of jobs",
    )
    p.add_argument(
        "--study-trials",
        type=int,
        default=300,
        help="study mode: measure until this many trial jobs were created (default 300)",
    )
    p.add_argument(
        "--study-complete-after",
        type=float,
        nargs=2,
        default=[10.0, 15.0],
        metavar=("MIN", "MAX"),
        help="study mode: kwok completes a trial Pod this many seconds after it runs",
    )
    p.add_argument("--label", default="", help="study mode: names the entry (e.g. the operator version)")
    p.add_argument("--floor", type=int, default=0, metavar="K",
                   help="floor mode: no operator; the jobs' Services and Pods made by K kubectl processes "
                        "at the moment of the apply (benchmarks/scale/floor.py)")  # fmt: skip
    p.add_argument("--floor-after-apply", action="store_true",
                   help="floor mode: make the children only once the apply has returned")  # fmt: skip
    p.add_argument("--operator-paused-during-apply", action="store_true",
                   help="stop the operator (SIGSTOP) until the apply returns: the best case of an "
                        "operator that yields to a burst of submissions")  # fmt: skip
    p.add_argument("--extra-manifest", type=Path, action="append", default=[],
                   help="also apply this file before the operator starts (repeatable)")  # fmt: skip
    args = p.parse_args(argv)
    args.jobs = args.jobs or [20]
    args.out = args.out or (FLOOR_RESULTS if args.floor else RESULTS)
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


def _prepare(plane: ControlPlane, nodes: int, timeout: float, extra_stages: str = "") -> None:
    plane.start_controllers(
        # The simulated nodes' health is not what is measured: a kwok starved of CPU on a busy
        # machine must not get its nodes marked NotReady (and their Pods evicted) mid-run. The
        # node lifecycle controller stays on: it lifts the not-ready taint new nodes start with.
        controller_manager_args=["--node-monitor-grace-period=600s"],
    )
    start_kwok(plane, extra_stages)
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
    # Not --wait=true: kubectl then waits for each job in turn at its own 5 requests/s (minutes).
    _kubectl_timed(plane, "delete", "trainingjobs", "--all", "-n", NAMESPACE, "--wait=false")
    listing = [*plane.kubectl, "get", "trainingjobs", "-n", NAMESPACE, "-o", "name"]
    wait_until(lambda: not subprocess.run(listing, capture_output=True, text=True, check=True).stdout.strip(),
               timeout, "the baseline's jobs to be gone", interval=1.0)  # fmt: skip
    return took


def _start_burst(plane: ControlPlane, tl: Timeline, pid: int, job_file: Path, jobs: int,
                 timeout: float, paused: bool = False) -> dict[str, Any]:  # fmt: skip
    """Apply all jobs at once; times until all Pods exist and every job is Running, the lags.
    `paused`: the operator is stopped (SIGSTOP) until the apply returns, as an operator that
    yields to a burst of submissions would idle."""
    out: dict[str, Any] = {}
    cpu_start, t0, wall0 = procstat.cpu_seconds(pid), time.monotonic(), time.time()
    cpu_by_process = _cpu_by_process(plane)
    if paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        out["apply_s"] = _kubectl_timed(plane, "apply", "-f", str(job_file))
    finally:
        if paused:
            os.kill(pid, signal.SIGCONT)
    count_pods = _count(tl, "pod_created")
    count_running = _count(tl, "job_running")
    out["pods_created_s"], pods = _seconds_until("rank Pods", count_pods, RANKS * jobs, t0, timeout)
    out["pods_created_s_reached"] = pods // RANKS
    out["all_running_s"], out["all_running_s_reached"] = _seconds_until(
        "phase Running", count_running, jobs, t0, timeout
    )
    out["operator_cpu_start_s"] = procstat.cpu_seconds(pid) - cpu_start
    out["cpu_start_s_by_process"] = _cpu_since(plane, cpu_by_process)
    with tl.lock:
        pod_running, job_running = dict(tl.pod_running), dict(tl.job_running)
    lags = stats.running_lags(job_running, tl.pods_of_jobs(), pod_running, RANKS)
    out["lag_s"] = stats.summary(list(lags.values()))
    by_kind, codes = _operator_requests(plane.work, wall0, time.time())
    out["start_operator_requests"] = dict(by_kind.most_common())
    out["start_operator_responses"] = dict(codes.most_common())
    return out


def _floor_burst(plane: ControlPlane, tl: Timeline, job_file: Path, jobs: int,
                 args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """The floor (benchmarks/scale/floor.py): the apply, and at once (or, `--floor-after-apply`,
    once it returned) the children by `args.floor` kubectl processes; times from the apply until
    all Pods exist and all Pods run, CPU by process."""
    docs = floor.children(scale_jobs(jobs, NAMESPACE, example_job()), RANKS)
    files = []
    for i, part in enumerate(floor.split(docs, args.floor)):
        files.append(plane.work / f"children-{i}.yaml")
        files[-1].write_text(manifest(part))
    cpu_before, t0 = _cpu_by_process(plane), time.monotonic()
    create = [[*plane.kubectl, "create", "-f", str(f)] for f in files]
    creators = (
        [] if args.floor_after_apply else [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in create]
    )
    out: dict[str, Any] = {
        "floor_clients": args.floor,
        "floor_after_apply": args.floor_after_apply,
        "apply_s": _kubectl_timed(plane, "apply", "-f", str(job_file)),
    }
    creators = creators or [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in create]
    for proc in creators:
        if proc.wait() != 0:
            raise RuntimeError("kubectl create of the children failed")
    out["children_created_s"] = time.monotonic() - t0
    count_pods = _count(tl, "pod_created")
    count_running = _count(tl, "pod_running")
    out["pods_created_s"], _ = _seconds_until("rank Pods", count_pods, RANKS * jobs, t0, args.timeout)
    out["pods_running_s"], _ = _seconds_until("Pods Running", count_running, RANKS * jobs, t0, args.timeout)
    out["cpu_start_s_by_process"] = _cpu_since(plane, cpu_before)
    return out


def _count(tl: Timeline, field: str) -> Callable[[], int]:
    """How many objects the timeline's `field` (pod_created, job_running, …) holds, as a probe."""
    return lambda: tl.count(lambda t: len(getattr(t, field)))


def _cpu_since(plane: ControlPlane, before: dict[str, float]) -> dict[str, float]:
    """CPU seconds of each process the benchmark started, since `before` (_cpu_by_process)."""
    return {name: round(cpu - before.get(name, 0.0), 1) for name, cpu in _cpu_by_process(plane).items()}


def _cpu_by_process(plane: ControlPlane) -> dict[str, float]:
    """CPU seconds so far of each process the benchmark started (the operator among them)."""
    seconds = {}
    for name, proc in plane.procs.items():
        try:
            seconds[name] = procstat.cpu_seconds(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return seconds


def _delete_all(plane: ControlPlane, tl: Timeline, jobs: int, timeout: float) -> dict[str, Any]:
    """Delete every job at once: seconds until all are gone (finalizers removed), all Pods gone."""
    t_del = time.monotonic()
    _kubectl_timed(plane, "delete", "trainingjobs", "--all", "-n", NAMESPACE, "--wait=false")
    count_jobs = _count(tl, "job_gone")
    count_pods = _count(tl, "pod_gone")
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
        for extra in args.extra_manifest:
            _kubectl_timed(plane, "apply", "-f", str(extra))
        job_file = work / "jobs.yaml"
        job_file.write_text(manifest(scale_jobs(jobs, NAMESPACE, example_job())))
        _log(jobs, "baseline: kubectl apply with the operator stopped")
        entry["apply_operator_stopped_s"] = _baseline_apply(plane, job_file, args.timeout)

        http = KubeHttp(plane.server, ADMIN_TOKEN)
        watcher = Watcher(http, NAMESPACE).start()
        if args.floor:
            entry.update(_floor_burst(plane, watcher.timeline, job_file, jobs, args))
            watcher.stop()
            return entry
        kubeconfig = plane.kubeconfig(OPERATOR_TOKEN.token, "operator")
        pid = start_operator(plane, kubeconfig, dict(os.environ), _operator_overrides(args))
        if args.operator_env:
            entry["operator_env"] = args.operator_env
        _log(jobs, f"operator up (pid {pid}); applying all jobs")
        if args.operator_paused_during_apply:
            entry["operator_paused_during_apply"] = True
        entry.update(_start_burst(plane, watcher.timeline, pid, job_file, jobs, args.timeout,
                                  args.operator_paused_during_apply))  # fmt: skip
        _log(jobs, f"all Running after {entry['all_running_s']} s; steady window of {args.steady} s")
        time.sleep(args.settle)
        entry["steady"] = _steady_window(plane, http, pid, args.steady)
        entry["steady"]["jobs_running"] = watcher.timeline.count(lambda t: len(t.job_running))
        _log(jobs, "deleting all jobs")
        entry["delete"] = _delete_all(plane, watcher.timeline, jobs, args.timeout)
        entry["operator_peak_rss_mb"] = procstat.peak_rss_mb(pid)
        watcher.stop()
    return entry


def _operator_overrides(args: argparse.Namespace) -> dict[str, str]:
    """`--operator-env`, and leader election off for an operator that is stopped during the apply
    (a stopped process cannot renew its Lease, and gives up leading when it wakes)."""
    paused = {"DMLT_LEADER_ELECTION": "false"} if args.operator_paused_during_apply else {}
    return {**paused, **args.operator_env}


def _log(jobs: int | str, message: str) -> None:
    what = jobs if isinstance(jobs, str) else f"{jobs} jobs"
    print(f"[{datetime.now():%H:%M:%S} {what}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- study mode


def run_study(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One study run on a control plane of its own, in `work` (see the module's docstring)."""
    par, total = args.study_parallelism, args.study_trials
    tag = f"study p={par}"
    policy = work / "audit-policy.yaml"
    policy.write_text(json.dumps(AUDIT_POLICY))
    audit_args = [f"--audit-policy-file={policy}", f"--audit-log-path={work / 'audit.log'}",
                  "--audit-log-maxsize=0"]  # fmt: skip
    low, high = args.study_complete_after
    entry: dict[str, Any] = {"label": args.label, "parallelism": par, "trials": total, "nodes": args.nodes,
                             "complete_after_s": [low, high]}  # fmt: skip
    stage = manifest([st.trial_complete_stage(int(low * 1000), int(high * 1000))])
    plane = ControlPlane(work, tokens=[OPERATOR_TOKEN], apiserver_args=audit_args,
                         manifest_kinds=CHART_API_KINDS)  # fmt: skip
    with plane:
        _prepare(plane, args.nodes, args.timeout, stage)
        secret_file, study_file = work / "secret.yaml", work / "study.yaml"
        secret_file.write_text(manifest([st.storage_secret(NAMESPACE, f"sqlite:///{work / 'optuna.db'}")]))
        study_file.write_text(manifest([st.scale_study(NAMESPACE, par, st.example_study())]))
        _kubectl_timed(plane, "apply", "-f", str(secret_file))
        http = KubeHttp(plane.server, ADMIN_TOKEN)
        watcher = Watcher(http, NAMESPACE).start()
        tl = watcher.timeline
        kubeconfig = plane.kubeconfig(OPERATOR_TOKEN.token, "operator")
        env = {"DMLT_DEFAULT_TRACKING_URI": "", **args.operator_env}  # no MLflow server here
        pid = start_operator(plane, kubeconfig, dict(os.environ), env)
        entry["operator_env"] = env
        _log(tag, f"operator up (pid {pid}); applying the study")
        cpu_start, t0, wall0 = procstat.cpu_seconds(pid), time.monotonic(), time.time()
        _kubectl_timed(plane, "apply", "-f", str(study_file))
        count_jobs = _count(tl, "job_seen")
        count_running = _count(tl, "job_running")
        _seconds_until("trial jobs created", count_jobs, par, t0, args.timeout)
        _seconds_until("trial jobs Running", count_running, par, t0, args.timeout)
        _log(tag, f"{par} trial jobs Running; waiting for {total} trial jobs in all")
        _seconds_until("replacement trial jobs", count_jobs, total, t0, args.timeout)
        entry["wall_s"] = time.monotonic() - t0
        entry["operator_cpu_s"] = procstat.cpu_seconds(pid) - cpu_start
        by_kind, codes = _operator_requests(plane.work, wall0, time.time())
        entry["operator_requests"] = dict(by_kind.most_common())
        entry["operator_responses"] = dict(codes.most_common())
        entry["operator_requests_per_s"] = sum(by_kind.values()) / entry["wall_s"]
        with tl.lock:
            seen, running, finished = dict(tl.job_seen), dict(tl.job_running), dict(tl.pod_finished)
        entry.update(st.summarize(seen, running, finished, par, wall0))
        _log(tag, "deleting the study")
        t_del = time.monotonic()
        _kubectl_timed(plane, "delete", "tuningstudies", "--all", "-n", NAMESPACE,
                       f"--timeout={int(args.timeout)}s")  # fmt: skip
        entry["study_deleted_s"] = time.monotonic() - t_del
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


def save(entries: list[dict[str, Any]], path: Path, key: str = "runs") -> list[dict[str, Any]]:
    """Merge `entries` into the file's list `key` ("runs": one per number of jobs; "floors": one
    per number of jobs and variant; "studies": one per label and parallelism); all of that list,
    ordered. Other lists are kept."""
    data = json.loads(path.read_text()) if path.exists() else {}
    idents = {
        "runs": lambda e: e["jobs"],
        "floors": lambda e: (e["jobs"], bool(e.get("floor_after_apply"))),
        "studies": lambda e: (e["parallelism"], e.get("label", "")),
    }
    ident = idents[key]
    by_id = {ident(e): e for e in data.get(key, [])}
    for e in entries:
        by_id.pop(ident(e), None)  # a rerun goes to the end: the order of the runs
        by_id[ident(e)] = e
    merged = [by_id[k] for k in sorted(by_id)] if key != "studies" else list(by_id.values())
    data[key] = merged
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return merged


def _stamp(entry: dict[str, Any], commit: str, kwok_version: str, args: argparse.Namespace) -> None:
    entry.update(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        commit=commit,
        machine=_machine(),
        kwok=kwok_version,
        settings={"settle_s": args.settle, "steady_s": args.steady},
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A plain SIGTERM would skip the `finally` that ends the control plane's processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    kwok_version, commit = kwok_dir().name, _git_commit()  # the code as it was at the start
    if args.study_parallelism:
        work = Path(tempfile.mkdtemp(prefix=f"bench-study-{args.study_parallelism}-"))
        _log("study", f"work directory {work}")
        entry = run_study(args, work)
        _stamp(entry, commit, kwok_version, args)
        print(json.dumps(entry, indent=2), file=sys.stderr)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)
        print(render_study_table(save([entry], args.out, "studies")))
        return 0
    entries = []
    for jobs in args.jobs:
        work = Path(tempfile.mkdtemp(prefix=f"bench-scale-{jobs}-"))
        _log(jobs, f"work directory {work}")
        entry = run_once(jobs, args.nodes, args, work)
        _stamp(entry, commit, kwok_version, args)
        entries.append(entry)
        print(json.dumps(entry, indent=2), file=sys.stderr)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)
    if args.floor:
        print(json.dumps(save(entries, args.out, "floors"), indent=2))
        return 0
    merged = save(entries, args.out)
    print(render_table(merged))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
