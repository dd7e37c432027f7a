"""MLflow through its REST API (urllib): the operator image carries no mlflow package.

Only what a TuningStudy needs, each call safe to repeat after a crash at any point:
- a parent run per study, found again by its `dmlt.study_uid` tag before one is created;
- finishing that run with the study's best value;
- registering the best trial's model: the registered model is created unless it exists, and
  a version is created unless one tagged with this study and trial exists.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

API = "api/2.0/mlflow"
MAX_PARAM_LENGTH = 6000
"""MLflow 2.x stores at most 6000 characters per param value (MLflow 3: 8000)."""
TAG_STUDY = "dmlt.study"
TAG_STUDY_UID = "dmlt.study_uid"
TAG_TRIAL = "dmlt.trial"
TAG_KIND = "dmlt.kind"


class MlflowError(RuntimeError):
    """A failed MLflow call: HTTP status and MLflow error code when the server answered."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _quote(text: str) -> str:
    """A string literal of MLflow's search-filter grammar."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _now_ms() -> int:
    return int(time.time() * 1000)


Metrics = Mapping[str, float]
Params = Mapping[str, Any]
Tags = Mapping[str, str]


class MlflowTracking(Protocol):
    """What the TuningStudy handlers ask of MLflow (MlflowRest does it; unit tests fake it)."""

    def ensure_parent_run(
        self, experiment: str, run_name: str, study: str, study_uid: str, params: Params | None = None
    ) -> str: ...
    def finish_run(
        self, run_id: str, status: str, metrics: Metrics | None = None, tags: Tags | None = None
    ) -> None: ...
    def register_model(
        self, name: str, source: str, run_id: str | None, tags: Tags, description: str = ""
    ) -> str: ...


class MlflowRest:
    """A small client of one tracking server."""

    def __init__(self, tracking_uri: str, timeout_s: float = 10.0) -> None:
        if not tracking_uri.startswith(("http://", "https://")):
            raise MlflowError(f"tracking URI {tracking_uri!r}: only http(s) servers are supported")
        self.base = tracking_uri.rstrip("/")
        self.timeout_s = timeout_s

    def call(
        self,
        method: str,
        endpoint: str,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One request to `<server>/api/2.0/mlflow/<endpoint>`; the decoded JSON answer."""
        url = f"{self.base}/{API}/{endpoint}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", errors="replace")
            try:
                err = json.loads(text)
            except ValueError:
                err = {}
            code = err.get("error_code") if isinstance(err, dict) else None
            message = (err.get("message") if isinstance(err, dict) else None) or text[:300] or exc.reason
            raise MlflowError(
                f"MLflow {endpoint}: {exc.code} {code or ''} {message}".strip(), exc.code, code
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MlflowError(f"MLflow {endpoint}: cannot reach {self.base}: {reason}") from None
        if not raw:
            return {}
        try:
            decoded = json.loads(raw)
        except ValueError:
            raise MlflowError(f"MLflow {endpoint}: the answer is not JSON: {raw[:200]!r}") from None
        return decoded if isinstance(decoded, dict) else {}

    # ---- experiments and runs

    def experiment_id(self, name: str) -> str:
        """The id of experiment `name`, created when missing."""
        try:
            found = self.call("GET", "experiments/get-by-name", query={"experiment_name": name})
            return str(found["experiment"]["experiment_id"])
        except MlflowError as exc:
            if exc.code != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            return str(self.call("POST", "experiments/create", {"name": name})["experiment_id"])
        except MlflowError as exc:
            if exc.code != "RESOURCE_ALREADY_EXISTS":
                raise
        found = self.call("GET", "experiments/get-by-name", query={"experiment_name": name})
        return str(found["experiment"]["experiment_id"])

    def find_run(self, experiment_id: str, tag: str, value: str) -> str | None:
        """The newest active run of the experiment whose tag `tag` is `value`."""
        found = self.call(
            "POST",
            "runs/search",
            {
                "experiment_ids": [experiment_id],
                "filter": f"tags.`{tag}` = {_quote(value)}",
                "run_view_type": "ACTIVE_ONLY",
                "max_results": 1,
                "order_by": ["attributes.start_time DESC"],
            },
        )
        runs = found.get("runs") or []
        return str(runs[0]["info"]["run_id"]) if runs else None

    def create_run(self, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> str:
        created = self.call(
            "POST",
            "runs/create",
            {
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": _now_ms(),
                "tags": [{"key": k, "value": str(v)} for k, v in tags.items()],
            },
        )
        return str(created["run"]["info"]["run_id"])

    def log_batch(
        self,
        run_id: str,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        now = _now_ms()
        self.call(
            "POST",
            "runs/log-batch",
            {
                "run_id": run_id,
                "metrics": [
                    {"key": k, "value": float(v), "timestamp": now, "step": 0}
                    for k, v in (metrics or {}).items()
                ],
                "params": [{"key": k, "value": str(v)[:MAX_PARAM_LENGTH]} for k, v in (params or {}).items()],
                "tags": [{"key": k, "value": str(v)} for k, v in (tags or {}).items()],
            },
        )

    def ensure_parent_run(
        self,
        experiment: str,
        run_name: str,
        study: str,
        study_uid: str,
        params: Mapping[str, Any] | None = None,
    ) -> str:
        """The study's parent run: found by its uid tag, else created (with its params)."""
        experiment_id = self.experiment_id(experiment)
        existing = self.find_run(experiment_id, TAG_STUDY_UID, study_uid)
        if existing:
            return existing
        run_id = self.create_run(
            experiment_id,
            run_name,
            {TAG_KIND: "tuning-study", TAG_STUDY: study, TAG_STUDY_UID: study_uid},
        )
        if params:
            self.log_batch(run_id, params=params)
        return run_id

    def finish_run(
        self,
        run_id: str,
        status: str,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Log the final metrics and tags, then end the run (FINISHED, FAILED or KILLED)."""
        if metrics or tags:
            self.log_batch(run_id, metrics=metrics, tags=tags)
        self.call("POST", "runs/update", {"run_id": run_id, "status": status, "end_time": _now_ms()})

    # ---- the model registry

    def find_model_version(self, name: str, tags: Mapping[str, str]) -> str | None:
        """The version of registered model `name` that carries all of `tags`, if any."""
        token = None
        for _ in range(20):  # 20 pages of 200: far more versions than one study makes
            query: dict[str, Any] = {"filter": f"name={_quote(name)}", "max_results": 200}
            if token:
                query["page_token"] = token
            found = self.call("GET", "model-versions/search", query=query)
            for version in found.get("model_versions") or []:
                have = {t.get("key"): t.get("value") for t in version.get("tags") or []}
                if all(have.get(k) == v for k, v in tags.items()):
                    return str(version["version"])
            token = found.get("next_page_token")
            if not token:
                return None
        return None

    def register_model(
        self, name: str, source: str, run_id: str | None, tags: Mapping[str, str], description: str = ""
    ) -> str:
        """Register `source` (a `runs:/` or `models:/m-…` URI) as a version of model `name`.

        Idempotent: a version already tagged with `tags` is returned instead of a new one.
        """
        try:
            self.call("POST", "registered-models/create", {"name": name})
        except MlflowError as exc:
            if exc.code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        existing = self.find_model_version(name, tags)
        if existing:
            return existing
        body: dict[str, Any] = {
            "name": name,
            "source": source,
            "tags": [{"key": k, "value": str(v)} for k, v in tags.items()],
        }
        if description:
            body["description"] = description
        if run_id:
            body["run_id"] = run_id
        model_id = logged_model_id(source)
        if model_id:
            body["model_id"] = model_id
        created = self.call("POST", "model-versions/create", body)
        return str(created["model_version"]["version"])


def logged_model_id(uri: str) -> str | None:
    """`m-…` of an MLflow 3 logged-model URI `models:/m-…`; None for other URIs."""
    if not uri.startswith("models:/"):
        return None
    rest = uri.removeprefix("models:/")
    return rest if rest.startswith("m-") and "/" not in rest else None
