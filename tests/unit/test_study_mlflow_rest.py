"""The operator's MLflow REST client against a stub server that answers like MLflow's (in memory,
on a loopback port): every call the client makes is safe to repeat."""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from dmlt_operator.tuningstudy.mlflow_rest import MlflowError, MlflowRest, logged_model_id

pytestmark = pytest.mark.unit


class StubMlflow:
    """The few endpoints the operator uses, with MLflow's error codes."""

    def __init__(self) -> None:
        self.experiments: dict[str, str] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.models: set[str] = set()
        self.versions: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str]] = []
        self.fail_next: int | None = None

    def handle(self, method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, dict]:
        self.calls.append((method, path))
        if self.fail_next:
            status, self.fail_next = self.fail_next, None
            return status, {"error_code": "INTERNAL_ERROR", "message": "boom"}
        endpoint = path.removeprefix("/api/2.0/mlflow/")
        if endpoint == "experiments/get-by-name":
            name = query["experiment_name"]
            if name not in self.experiments:
                return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"no experiment {name}"}
            return 200, {"experiment": {"experiment_id": self.experiments[name], "name": name}}
        if endpoint == "experiments/create":
            if body["name"] in self.experiments:
                return 400, {"error_code": "RESOURCE_ALREADY_EXISTS", "message": "exists"}
            self.experiments[body["name"]] = str(len(self.experiments) + 1)
            return 200, {"experiment_id": self.experiments[body["name"]]}
        if endpoint == "runs/create":
            run_id = f"run{len(self.runs)}"
            tags = {t["key"]: t["value"] for t in body.get("tags", [])}
            self.runs[run_id] = {"experiment_id": body["experiment_id"], "tags": tags, "status": "RUNNING",
                                 "params": {}, "metrics": {}, "start_time": body["start_time"]}  # fmt: skip
            return 200, {"run": {"info": {"run_id": run_id}}}
        if endpoint == "runs/search":
            key, value = re.fullmatch(r"tags\.`([^`]+)` = '(.*)'", body["filter"]).groups()
            found = [
                {"info": {"run_id": rid}}
                for rid, run in self.runs.items()
                if run["experiment_id"] in body["experiment_ids"] and run["tags"].get(key) == value
            ]
            return 200, ({"runs": found[: body["max_results"]]} if found else {})
        if endpoint == "runs/log-batch":
            run = self.runs[body["run_id"]]
            for p in body.get("params", []):
                if p["key"] in run["params"] and run["params"][p["key"]] != p["value"]:
                    return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "param changed"}
                run["params"][p["key"]] = p["value"]
            run["metrics"].update({m["key"]: m["value"] for m in body.get("metrics", [])})
            run["tags"].update({t["key"]: t["value"] for t in body.get("tags", [])})
            return 200, {}
        if endpoint == "runs/update":
            self.runs[body["run_id"]]["status"] = body["status"]
            return 200, {}
        if endpoint == "registered-models/create":
            if body["name"] in self.models:
                return 400, {"error_code": "RESOURCE_ALREADY_EXISTS", "message": "exists"}
            self.models.add(body["name"])
            return 200, {"registered_model": {"name": body["name"]}}
        if endpoint == "model-versions/search":
            (name,) = re.fullmatch(r"name='(.*)'", query["filter"]).groups()
            return 200, {"model_versions": [v for v in self.versions if v["name"] == name]}
        if endpoint == "model-versions/create":
            if body["name"] not in self.models:
                return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no model"}
            version = {**body, "version": str(sum(v["name"] == body["name"] for v in self.versions) + 1)}
            self.versions.append(version)
            return 200, {"model_version": version}
        return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": path}


@pytest.fixture
def stub() -> Iterator[tuple[StubMlflow, str]]:
    state = StubMlflow()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            parsed = urllib.parse.urlparse(self.path)
            query = dict(urllib.parse.parse_qsl(parsed.query))
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else {}
            status, answer = state.handle(method, parsed.path, query, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_parent_run_is_created_once(stub):
    state, uri = stub
    client = MlflowRest(uri)
    params = {"algorithm": "tpe", "search_space": "x" * 7000}
    first = client.ensure_parent_run("dmlt-tuning", "study", "ns.study", "uid-1", params)
    again = client.ensure_parent_run("dmlt-tuning", "study", "ns.study", "uid-1", params)  # after a crash
    assert first == again and len(state.runs) == 1
    run = state.runs[first]
    assert run["tags"] == {"dmlt.kind": "tuning-study", "dmlt.study": "ns.study", "dmlt.study_uid": "uid-1"}
    assert run["params"]["algorithm"] == "tpe" and len(run["params"]["search_space"]) == 6000
    other = client.ensure_parent_run("dmlt-tuning", "study", "ns.study", "uid-2")  # a new study, same name
    assert other != first and state.experiments == {"dmlt-tuning": "1"}


def test_finish_run_logs_and_ends(stub):
    state, uri = stub
    client = MlflowRest(uri)
    run_id = client.ensure_parent_run("e", "s", "ns.s", "u")
    client.finish_run(run_id, "FINISHED", {"best_val_auc": 0.93}, {"dmlt.best_trial": "4"})
    client.finish_run(run_id, "FINISHED", {"best_val_auc": 0.93}, {"dmlt.best_trial": "4"})  # a retry
    run = state.runs[run_id]
    assert run["status"] == "FINISHED" and run["metrics"] == {"best_val_auc": 0.93}
    assert run["tags"]["dmlt.best_trial"] == "4"


def test_register_model_is_idempotent(stub):
    state, uri = stub
    client = MlflowRest(uri)
    tags = {"dmlt.study_uid": "u", "dmlt.trial": "3"}
    v1 = client.register_model("study", "models:/m-abc", "run3", tags, description="best")
    v2 = client.register_model("study", "models:/m-abc", "run3", tags)
    assert v1 == v2 == "1" and len(state.versions) == 1
    created = state.versions[0]
    assert created["source"] == "models:/m-abc" and created["model_id"] == "m-abc"
    assert created["run_id"] == "run3" and created["description"] == "best"
    v3 = client.register_model(
        "study", "runs:/run5/model", "run5", {"dmlt.study_uid": "u", "dmlt.trial": "5"}
    )
    assert v3 == "2" and "model_id" not in state.versions[1]


def test_errors_carry_status_and_code(stub):
    state, uri = stub
    client = MlflowRest(uri)
    with pytest.raises(MlflowError) as err:
        client.call("POST", "no/such/endpoint", {})
    assert err.value.status == 404 and err.value.code == "ENDPOINT_NOT_FOUND"
    state.fail_next = 500
    with pytest.raises(MlflowError, match="500 INTERNAL_ERROR boom"):
        client.ensure_parent_run("e", "s", "ns.s", "u")


def test_unreachable_server_and_bad_uris():
    with pytest.raises(MlflowError, match="cannot reach"):
        MlflowRest("http://127.0.0.1:1", timeout_s=2).experiment_id("e")
    with pytest.raises(MlflowError, match="only http"):
        MlflowRest("file:///tmp/mlruns")


def test_logged_model_ids():
    assert logged_model_id("models:/m-0123abc") == "m-0123abc"
    assert logged_model_id("models:/my-model/3") is None
    assert logged_model_id("runs:/abc/model") is None
