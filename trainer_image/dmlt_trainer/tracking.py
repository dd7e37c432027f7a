"""MLflow tracking, used by rank 0 only. Explicit run ids, so trials in threads don't mix."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from dmlt_trainer.config import TrackingConfig

PARENT_TAG = "mlflow.parentRunId"


class NullTracker:
    """What non-zero ranks and untracked runs get: every call does nothing."""

    run_id: str | None = None

    def start(
        self,
        run_name: str,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str | None:
        return None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_model(self, model: Any, example: Any, register_as: str | None = None) -> str | None:
        return None

    def finish(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(NullTracker):
    def __init__(self, cfg: TrackingConfig) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self._mlflow = mlflow
        self.tracking_uri = cfg.tracking_uri or mlflow.get_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.experiment_id = self._experiment(cfg.experiment)
        self.run_id = None

    def _experiment(self, name: str) -> str:
        existing = self.client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another trial or rank created it first
            existing = self.client.get_experiment_by_name(name)
            if existing is None:
                raise
            return existing.experiment_id

    def start(self, run_name, run_id=None, parent_run_id=None, tags=None):
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return run_id
        all_tags = {"mlflow.runName": run_name, **(tags or {})}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params):
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        try:
            for start in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[start : start + 100])
        except Exception as exc:  # a resumed run already holds these params
            if "already logged" not in str(exc) and "Changing param" not in str(exc):
                raise

    def log_metrics(self, metrics, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and math.isfinite(v)
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path, artifact_path=None):
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags):
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_model(self, model, example, register_as=None):
        """Log the model with an inferred signature; register it when asked. Returns its URI."""
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        model = model.eval()
        with torch.no_grad():
            output = model(torch.as_tensor(example)).numpy()
        signature = infer_signature(example, output)
        self._mlflow.set_tracking_uri(self.tracking_uri)
        with self._mlflow.start_run(run_id=self.run_id):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                signature=signature,
                input_example=example,
                # Inferring requirements imports the model in a subprocess: ~15 s per run.
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
        self.client.update_run(self.run_id, status="RUNNING")
        if register_as:
            version = self._mlflow.register_model(info.model_uri, register_as)
            self.set_tags({"registered_model": f"{register_as}/{version.version}"})
        return info.model_uri

    def finish(self, status="FINISHED"):
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)


def make_tracker(cfg: TrackingConfig, is_main: bool) -> NullTracker:
    if is_main and cfg.enabled:
        return MlflowTracker(cfg)
    return NullTracker()
