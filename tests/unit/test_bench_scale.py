import json
import math

import pytest

from benchmarks.scale import audit, procstat, prom, stats
from benchmarks.scale.jobs import example_job, manifest, scale_jobs
from benchmarks.scale.kwok import fake_node, kwok_command, pinned_version
from benchmarks.scale.operator_process import CHART_MANIFEST, chart_operator_env
from benchmarks.scale import study as st
from benchmarks.scale.report import ROWS, STUDY_ROWS, render_study_table, render_table

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------- percentiles


def test_percentile_interpolates_between_closest_ranks_like_numpy():
    values = [4.0, 1.0, 3.0, 2.0]
    assert stats.percentile(values, 0) == 1.0
    assert stats.percentile(values, 50) == 2.5
    assert stats.percentile(values, 90) == pytest.approx(3.7)
    assert stats.percentile(values, 100) == 4.0


def test_percentile_of_one_value_is_that_value_and_of_none_is_nan():
    assert stats.percentile([7.0], 99) == 7.0
    assert math.isnan(stats.percentile([], 50))
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_summary_has_the_table_percentiles_and_the_count():
    s = stats.summary([float(i) for i in range(1, 101)])
    assert s["n"] == 100 and s["max"] == 100.0
    assert s["p50"] == pytest.approx(50.5) and s["p99"] == pytest.approx(99.01)


def test_lag_counts_from_the_last_pod_running_of_each_job():
    pods = {"a": ["a-0", "a-1"], "b": ["b-0", "b-1"], "c": ["c-0", "c-1"]}
    pod_running = {"a-0": 10.0, "a-1": 12.0, "b-0": 11.0, "b-1": 11.5, "c-0": 11.0}
    job_running = {"a": 13.5, "b": 11.0, "c": 20.0}
    lags = stats.running_lags(job_running, pods, pod_running, ranks=2)
    # b's phase was seen before its last Pod's event: clamped; c's second Pod never ran: no lag.
    assert lags == {"a": 1.5, "b": 0.0}


# --------------------------------------------------------------------------- metrics text

METRICS = """\
# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",resource="pods",verb="LIST"} 12
apiserver_request_total{code="201",component="apiserver",resource="pods",verb="POST"} 3
apiserver_request_total{code="500",component="apiserver",resource="pods",subresource="log",verb="GET"} 1e+02
apiserver_request_total_other{code="200"} 999
apiserver_current_inflight_requests{request_kind="readOnly"} 1
"""


def test_metric_samples_are_parsed_with_their_labels():
    samples = prom.parse_samples(METRICS, "apiserver_request_total")
    assert len(samples) == 3
    assert samples[2] == ({"code": "500", "component": "apiserver", "resource": "pods",
                           "subresource": "log", "verb": "GET"}, 100.0)  # fmt: skip


def test_metric_total_sums_matching_samples_only():
    assert prom.total(METRICS, "apiserver_request_total") == 115
    assert prom.total(METRICS, "apiserver_request_total", where={"resource": "pods", "verb": "GET"}) == 100
    assert prom.total(METRICS, "apiserver_request_total", exclude={"subresource": "log"}) == 15
    assert prom.total(METRICS, "no_such_metric") == 0


def test_metric_label_values_may_hold_escaped_quotes_and_commas():
    text = 'm{a="x,\\"y\\"",b="z"} 2\n'
    assert prom.parse_samples(text, "m") == [({"a": 'x,"y"', "b": "z"}, 2.0)]


# --------------------------------------------------------------------------- audit log


def _event(stage, verb, resource, at, user="op", subresource=None, code=200):
    ref = {"resource": resource, **({"subresource": subresource} if subresource else {})}
    return json.dumps({"stage": stage, "verb": verb, "objectRef": ref, "user": {"username": user},
                       "requestReceivedTimestamp": at, "responseStatus": {"code": code}})  # fmt: skip


def test_audit_requests_of_one_user_in_a_window_by_kind():
    lines = [
        _event("RequestReceived", "get", "pods", "2026-12-07T00:00:00.500000Z", subresource="log"),
        _event("ResponseComplete", "get", "pods", "2026-12-07T00:00:00.500000Z", subresource="log", code=500),
        _event("RequestReceived", "patch", "trainingjobs", "2026-12-07T00:00:01.000000Z"),
        _event("RequestReceived", "patch", "trainingjobs", "2026-12-07T00:00:09.999999Z"),
        _event("RequestReceived", "list", "pods", "2026-12-07T00:00:10.000000Z"),  # window end
        _event("RequestReceived", "list", "pods", "2026-12-07T00:00:02.000000Z", user="kwok"),
        "",
    ]
    start = audit.parse_time("2026-12-07T00:00:00Z")
    counts = audit.requests_in_window(lines, "op", start, start + 10)
    assert counts == {"get pods/log": 1, "patch trainingjobs": 2}
    codes = audit.response_codes_in_window(lines, "op", start, start + 10)
    assert codes == {"get pods/log 500": 1}


def test_audit_time_is_utc_with_microseconds():
    assert audit.parse_time("1970-01-01T00:00:01.250000Z") == 1.25


# --------------------------------------------------------------------------- /proc


def test_cpu_seconds_read_after_a_command_name_with_spaces_and_parentheses():
    fields = ["S"] + ["0"] * 10 + ["150", "50"] + ["0"] * 30
    stat = "1234 (python (my op)) " + " ".join(fields)
    assert procstat.cpu_seconds_from_stat(stat, ticks=100) == 2.0


def test_peak_rss_field_of_proc_status():
    status = "Name:\tpython\nVmPeak:\t  300000 kB\nVmHWM:\t  181000 kB\n"
    assert procstat.kib_field(status, "VmHWM") == 181000
    with pytest.raises(KeyError):
        procstat.kib_field(status, "VmRSS")


# --------------------------------------------------------------------------- inputs


def test_scale_jobs_are_the_example_renamed_with_an_emptydir_checkpoint():
    template = example_job()
    jobs = scale_jobs(3, "scale", template)
    assert [j["metadata"] for j in jobs][0] == {"name": "scale-0000", "namespace": "scale"}
    assert [j["metadata"]["name"] for j in jobs][-1] == "scale-0002"
    assert all(j["spec"]["checkpoint"] == {"emptyDir": {}} for j in jobs)
    assert jobs[0]["spec"]["replicas"] == 2 and jobs[0]["spec"]["trainer"] == template["spec"]["trainer"]
    assert "persistentVolumeClaim" in template["spec"]["checkpoint"]  # the template is not changed
    assert manifest(jobs).count("kind: TrainingJob") == 3


def test_operator_env_is_the_charts_deployment_env():
    env = chart_operator_env(CHART_MANIFEST.read_text())
    assert env["DMLT_RECONCILE_INTERVAL_SECONDS"] == "300"
    assert env["DMLT_NAMESPACES"] == ""
    assert "HOME" not in env


def test_kwok_version_and_command():
    assert pinned_version("A=1\nKWOK_VERSION=v0.8.0\n") == "v0.8.0"
    with pytest.raises(KeyError):
        pinned_version("A=1\n")
    argv = kwok_command("kwok", "k.cfg", "stages.yaml", 4321)
    assert "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake" in argv
    assert "--node-port=4321" in argv and "--config=stages.yaml" in argv
    node = fake_node("n1")
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    assert "taints" not in node.get("spec", {})


# --------------------------------------------------------------------------- table


def _entry(jobs, **over):
    entry = {
        "jobs": jobs, "nodes": 20, "apply_s": 1.23, "apply_operator_stopped_s": 0.5,
        "pods_created_s": 3.0, "pods_created_s_reached": jobs, "all_running_s": 9.0,
        "all_running_s_reached": jobs,
        "lag_s": {"n": jobs, "p50": 0.5, "p90": 3.7, "p99": 6.0, "max": 6.7},
        "operator_cpu_start_s": 12.0, "operator_peak_rss_mb": 181.4,
        "steady": {"operator_cores": 0.4912, "operator_requests_per_s": 200.0,
                   "apiserver_requests_per_s": 250.0},
        "delete": {"jobs_gone_s": 49.0, "pods_gone_s": 50.0},
    }  # fmt: skip
    entry.update(over)
    return entry


def test_table_has_a_column_per_run_ordered_by_jobs_and_a_row_per_figure():
    table = render_table([_entry(1000), _entry(200)])
    lines = table.strip().splitlines()
    assert lines[0] == "| 2-rank TrainingJobs applied at once (20 fake nodes) | 200 | 1,000 |"
    assert lines[1] == "|---|---:|---:|"
    assert len(lines) == 2 + len(ROWS)
    assert "| 0.50 / 3.70 / 6.00 / 6.70 s |" in table
    assert "| 0.491 cores |" in table and "| 181 MB |" in table and "| 1.2 s |" in table


def test_table_shows_how_far_a_run_got_when_it_timed_out():
    table = render_table([_entry(100, all_running_s=None, all_running_s_reached=87)])
    assert "| – (87/100 by the timeout) |" in table


def test_operator_settings_can_be_overridden_per_run():
    from benchmarks.bench_scale import parse_args

    args = parse_args(["--jobs", "5", "--operator-env", "DMLT_API_QPS=200", "--operator-env", "A=b=c"])
    assert args.jobs == [5] and args.operator_env == {"DMLT_API_QPS": "200", "A": "b=c"}
    assert parse_args([]).operator_env == {}


# --------------------------------------------------------------------------- study mode


def test_the_scale_study_is_a_valid_study_with_the_budgets_out_of_reach():
    from dmlt_operator.tuningstudy.spec import parse_study_spec

    doc = st.scale_study("scale", 100, st.example_study())
    spec = parse_study_spec(doc["spec"])
    assert (spec.parallelism, spec.algorithm.name, spec.pruner.name) == (100, "random", "none")
    assert spec.max_trials == spec.max_failed_trials == 10_000
    assert spec.storage.secret_ref.name == st.STORAGE_SECRET and not spec.mlflow.tracking_uri
    assert "mlflow" not in doc["spec"]["trialTemplate"]
    secret = st.storage_secret("scale", "sqlite:////tmp/x.db")
    assert secret["stringData"] == {st.STORAGE_KEY: "sqlite:////tmp/x.db"}


def test_the_kwok_stage_ends_running_trainingjob_pods_after_the_delay():
    stage = st.trial_complete_stage(10_000, 15_000)
    spec = stage["spec"]
    assert spec["delay"] == {"durationMilliseconds": 10_000, "jitterDurationMilliseconds": 15_000}
    selector = {e["key"]: e for e in spec["selector"]["matchExpressions"]}
    assert selector[".status.phase"]["values"] == ["Running"]
    assert selector[".metadata.ownerReferences.[].kind"]["values"] == ["TrainingJob"]
    assert "phase: Succeeded" in spec["next"]["statusTemplate"]


def test_a_replacement_is_paired_with_the_slot_a_finish_freed():
    # parallelism 2: jobs 0 and 1 fill the slots; each later job takes the slot of the k-th finish
    created = [0.0, 0.1, 10.5, 12.0, 30.0]
    finished = [10.0, 11.0, 29.0, 40.0]  # the last finish has no replacement yet
    assert st.replacement_lags(finished, created, 2) == pytest.approx([0.5, 1.0, 1.0])
    assert st.replacement_lags([5.0], [0.0, 4.0], 1) == [0.0]  # seen before its finish: 0


def test_the_study_summary_times_the_first_parallelism_trials_from_the_apply():
    seen = {f"t{i}": 100.0 + i for i in range(4)}
    running = {"t0": 103.0, "t1": 105.0}
    out = st.summarize(seen, running, {"t0-0": 110.0}, 2, 100.0)
    assert out["trials_created_s"] == 1.0 and out["trials_running_s"] == 5.0
    assert out["trial_jobs_created"] == 4 and out["replacement_lag_s"]["n"] == 1
    assert st.summarize({}, {}, {}, 2, 0.0)["trials_running_s"] is None


def test_study_entries_go_under_their_own_key_and_keep_the_job_runs(tmp_path):
    from benchmarks.bench_scale import save

    path = tmp_path / "scale.json"
    save([{"jobs": 100, "x": 1}], path)
    save([{"parallelism": 100, "label": "timer", "y": 1}], path, "studies")
    save([{"parallelism": 100, "label": "events", "y": 2}], path, "studies")
    merged = save([{"parallelism": 100, "label": "timer", "y": 3}], path, "studies")
    assert [(e["label"], e["y"]) for e in merged] == [("events", 2), ("timer", 3)]
    data = json.loads(path.read_text())
    assert data["runs"] == [{"jobs": 100, "x": 1}] and len(data["studies"]) == 2
    table = render_study_table(merged)
    assert "events, parallelism 100" in table and table.count("\n") == len(STUDY_ROWS) + 2


def test_kwoks_pod_ready_stage_allocates_no_pod_ip(tmp_path):
    from benchmarks.scale.kwok import without_pod_ips

    stage = """spec:
  next:
    statusTemplate: |
      {{ with $hostIPs }}
      hostIP: {{ index . 0 | Quote }}
      {{ end }}
      {{ $podIPs := PodIPsWith .spec.nodeName ( or .metadata.uid "" ) }}
      {{ with $podIPs }}
      podIP: {{ index . 0 | Quote }}
      podIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      phase: Running
"""
    out = without_pod_ips(stage)
    assert "podIP" not in out and "hostIP: {{ index . 0 | Quote }}" in out and "phase: Running" in out
    with pytest.raises(RuntimeError, match="found 0"):
        without_pod_ips(out)  # kwok's stages changed: say so, do not run a different benchmark


def test_cpu_by_process_is_listed_busiest_first_and_absent_in_older_runs():
    spent = {"etcd": 8.0, "kube-apiserver": 61.2, "operator": 25.8}
    table = render_table([_entry(1000, cpu_start_s_by_process=spent), _entry(200)])
    row = next(line for line in table.splitlines() if line.startswith("| CPU while they start, by process"))
    assert row == "| CPU while they start, by process | – | kube-apiserver 61.2, operator 25.8, etcd 8.0 |"


def test_the_floor_makes_each_jobs_service_and_rank_pods_as_the_operator_builds_them():
    from benchmarks.scale import floor

    docs = floor.children(scale_jobs(2, "scale", example_job()), ranks=2)
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("Service", "scale-0000"), ("Pod", "scale-0000-0"), ("Pod", "scale-0000-1"),
        ("Service", "scale-0001"), ("Pod", "scale-0001-0"), ("Pod", "scale-0001-1"),
    ]  # fmt: skip
    assert all("ownerReferences" not in d["metadata"] for d in docs)  # the jobs' uids are unknown
    assert docs[1]["spec"]["subdomain"] == "scale-0000" and docs[1]["metadata"]["namespace"] == "scale"
    parts = floor.split(docs, 2)
    assert sorted(len(p) for p in parts) == [3, 3] and sum(parts, []) != docs  # dealt, not halved


def test_floor_runs_go_to_their_own_file_one_per_variant(tmp_path):
    from benchmarks import bench_scale

    assert bench_scale.parse_args(["--floor", "2"]).out == bench_scale.FLOOR_RESULTS
    assert bench_scale.parse_args([]).out == bench_scale.RESULTS
    out = tmp_path / "floor.json"
    bench_scale.save([{"jobs": 1000, "floor_after_apply": False, "apply_s": 1.0}], out, "floors")
    bench_scale.save([{"jobs": 1000, "floor_after_apply": True, "apply_s": 2.0}], out, "floors")
    again = bench_scale.save([{"jobs": 1000, "floor_after_apply": True, "apply_s": 3.0}], out, "floors")
    assert [(e["floor_after_apply"], e["apply_s"]) for e in again] == [(False, 1.0), (True, 3.0)]


def test_an_operator_stopped_during_the_apply_runs_without_leader_election():
    from benchmarks import bench_scale

    paused = bench_scale.parse_args(["--operator-paused-during-apply", "--operator-env", "DMLT_API_QPS=100"])
    assert bench_scale._operator_overrides(paused) == {"DMLT_LEADER_ELECTION": "false", "DMLT_API_QPS": "100"}
    assert bench_scale._operator_overrides(bench_scale.parse_args([])) == {}
