"""Text for people: the summary a followed run ends with, and `dmlt describe`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dmlt import upstream as up
from dmlt import view
from dmlt.jobs import Job, Study
from dmlt.local import LocalJob, LocalStudy
from dmlt.mlflow_runs import MlflowRun
from dmlt.observe import METRICS_SHOWN, JobState, StudyState, age, format_params

SUMMARY_METRICS = (*METRICS_SHOWN, "test_auc", "test_f1", "test_accuracy")


def _metrics_line(metrics: dict[str, float]) -> str:
    keys = [k for k in SUMMARY_METRICS if k in metrics] or sorted(metrics)[:8]
    return " ".join(f"{k}={metrics[k]:.4f}" for k in keys) or "-"


def run_lines(run: MlflowRun | None, model_uri: str | None = None) -> list[str]:
    """`MLflow run: <url or id>` and `model: <uri>`."""
    if run is None:
        return ["MLflow run: none (tracking off, or no epoch finished)"]
    if run.url:
        where = run.url
    else:
        store = run.tracking_uri or "the local default store (./mlflow.db; `mlflow ui` shows it)"
        where = f"{run.run_id} on {store}"
    lines = [f"MLflow run: {where}"]
    model = model_uri or run.model_uri
    if model:
        lines.append(f"model: {model}")
    return lines


def job_summary(job: Job | LocalJob, state: JobState) -> list[str]:
    """How a followed job ended: phase, final metrics, MLflow run URL, model URI."""
    detail = [
        state.result or "",
        f"{state.progress} epochs" if state.epoch is not None else "",
        f"world size {state.world_size}",
        f"{state.restarts} restart(s)",
    ]
    lines = [f"{job.kind} {state.namespace}/{state.name} {state.phase}: {', '.join(d for d in detail if d)}"]
    if state.phase != up.SUCCEEDED and state.message:
        lines.append(f"reason: {state.message}")
    lines.append(f"final metrics: {_metrics_line(job.metrics())}")
    model = job.model_uri() if isinstance(job, LocalJob) else None
    lines += run_lines(job.mlflow_run(), model)
    return lines


def study_summary(study: Study | LocalStudy, state: StudyState) -> list[str]:
    """How a followed study ended: the trials, the best one, its run and model."""
    counts = state.counts
    lines = [
        view.plain_table(
            ["TRIAL", "STATE", state.objective.upper(), "EPOCHS", "PARAMS"],
            [
                [
                    t.number,
                    t.state,
                    "-" if t.value is None else f"{t.value:.4f}",
                    t.progress,
                    format_params(t.params),
                ]
                for t in state.trials
            ],
        )
    ]
    lines.append(
        f"{study.kind} {state.namespace}/{state.name} {state.phase}: trials {state.trials_done} "
        f"({counts.get('pruned', 0)} pruned, {counts.get('failed', 0)} failed)"
    )
    if state.phase != up.SUCCEEDED and state.message:
        lines.append(f"reason: {state.message}")
    best = study.best_trial
    if best is None:
        lines.append("best trial: none completed")
        return lines
    lines.append(view.best_line(state) if state.best else f"best trial {best.number}: {best.value}")
    job = study.job(best.number) if isinstance(study, Study) else None
    run = job.mlflow_run() if job is not None else _local_run(study, best.mlflow_run_id)
    model = None
    if state.registered_model:
        model = f"models:/{state.registered_model.get('name')}/{state.registered_model.get('version')}"
    lines += run_lines(run, model)
    return lines


def _local_run(study: Study | LocalStudy, run_id: str | None) -> MlflowRun | None:
    if run_id is None:
        return None
    from dmlt.mlflow_runs import fetch_run

    try:
        return fetch_run(None, run_id)
    except Exception:  # noqa: BLE001 - the summary shows the id even when the store cannot be read
        return MlflowRun(run_id=run_id, tracking_uri="")


def _conditions(conditions: Sequence[dict[str, Any]]) -> list[str]:
    rows = [[c.get("type"), c.get("status"), c.get("reason"), c.get("message")] for c in conditions]
    return (
        ["Conditions:", _indent(view.plain_table(["TYPE", "STATUS", "REASON", "MESSAGE"], rows))]
        if rows
        else []
    )


def _events(events: Sequence[Any]) -> list[str]:
    rows = [[e.type, e.reason, age(_stamp(e)), e.message] for e in events]
    if not rows:
        return ["Events: <none>"]
    return ["Events:", _indent(view.plain_table(["TYPE", "REASON", "AGE", "MESSAGE"], rows))]


def _stamp(event: Any) -> str | None:
    moment = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
    return moment.isoformat() if moment is not None else None


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _header(kind: str, state: JobState | StudyState) -> list[str]:
    message = f" ({state.message})" if state.message else ""
    return [
        f"Name:        {state.name}",
        f"Namespace:   {state.namespace}",
        f"Kind:        {kind}",
        f"Phase:       {state.phase or '-'}{message}",
    ]


def describe_job(job: Job, events: Sequence[Any]) -> list[str]:
    obj = job.object()
    state = JobState.from_object(obj)
    spec = obj.get("spec") or {}
    trainer = spec.get("trainer") or {}
    lines = _header(job.kind, state) + [
        f"Image:       {spec.get('image')}",
        f"World:       {spec.get('replicas', 1)} Pod(s) x {spec.get('procsPerNode', 1)} rank(s), "
        f"backend {spec.get('backend', 'auto')}",
        f"Trainer:     {format_params({k: v for k, v in trainer.items() if k != 'extraArgs'})}",
        f"Extra args:  {' '.join(trainer.get('extraArgs') or []) or '-'}",
        f"Progress:    {state.progress}   Ready: {state.ready or '-'}   "
        f"Attempt: {state.attempt}   Restarts: {state.restarts}",
        f"Metrics:     {_metrics_line(state.metrics)}",
        f"MLflow run:  {state.mlflow_run_id or '-'}",
    ]
    rows = [
        [
            r.get("rank"),
            r.get("pod"),
            r.get("attempt"),
            r.get("state"),
            r.get("ready"),
            r.get("node"),
            r.get("exitCode"),
            r.get("reason"),
        ]
        for r in state.ranks
    ]
    if rows:
        lines += [
            "Ranks:",
            _indent(
                view.plain_table(["RANK", "POD", "ATTEMPT", "STATE", "READY", "NODE", "EXIT", "REASON"], rows)
            ),
        ]
    return lines + _conditions(state.conditions) + _events(events)


def describe_study(study: Study, events: Sequence[Any]) -> list[str]:
    state = study.state()
    obj = study.object()
    spec = obj.get("spec") or {}
    lines = _header(study.kind, state) + [
        f"Objective:   {state.direction} {state.objective}",
        f"Algorithm:   {state.algorithm}   Pruner: {(spec.get('pruner') or {}).get('name', 'median')}",
        f"Trials:      {state.trials_done or '-'} ({format_params(state.counts) or '-'}), "
        f"parallelism {spec.get('parallelism', 1)}",
        f"Parameters:  {', '.join(p.get('name', '?') for p in spec.get('parameters') or [])}",
        f"Best:        {view.best_line(state) if state.best else '-'}",
        f"MLflow:      parent run {state.parent_run_id or '-'}",
    ]
    if state.registered_model:
        model = state.registered_model
        lines.append(
            f"Model:       models:/{model.get('name')}/{model.get('version')} (trial {model.get('trial')})"
        )
    if state.trials:
        lines += [
            "Trials:",
            _indent(
                view.plain_table(
                    ["TRIAL", "STATE", state.objective.upper(), "EPOCHS", "PARAMS", "JOB"],
                    [
                        [
                            t.number,
                            t.state,
                            "-" if t.value is None else f"{t.value:.4f}",
                            t.progress,
                            format_params(t.params),
                            t.job,
                        ]
                        for t in state.trials
                    ],
                )
            ),
        ]
    return lines + _conditions(state.conditions) + _events(events)
