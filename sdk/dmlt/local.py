"""The same specs run on this machine, with no cluster: the trainer as `dmlt-train` processes.

A TrainingJob spec becomes exactly the dmlt-train flags its Pods would get (the operator's own
`trainer_args`), with local paths for checkpoints and data; one rank is one process, more run
as local ranks through the trainer's elastic launcher (`--mode ddp`, the torchrun code path).
The process writes to a log file the client reads, so no pipe fills up and no thread reads it.

A TuningStudy runs on SQLite: the operator's own Optuna store asks for each trial, the trial
runs as the operator's trial job would (its flags, the storage URL in DMLT_OPTUNA_STORAGE),
and its result is told as the operator tells it. Trials run one at a time (SQLite is for one
writer); the study advances while it is waited on or followed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmlt import upstream as up
from dmlt.errors import DmltError
from dmlt.jobs import BestTrial, wait_for, watch_states
from dmlt.logs import LogLine
from dmlt.mlflow_runs import MlflowRun, fetch_run
from dmlt.observe import FINISHED, JobState, StudyState, TrialRow

RUNS_DIR = ".dmlt/runs"


@dataclass(frozen=True, slots=True)
class LocalPaths:
    """Where a local run keeps its files (the trainer's own defaults unless given)."""

    root: Path
    checkpoint_dir: str
    cache_dir: str

    @classmethod
    def default(cls, root: str | os.PathLike = ".", cfg: up.RunConfig | None = None) -> LocalPaths:
        """The trainer's paths (its defaults, or those `cfg` sets), relative to `root`."""
        values = up.trainer_values(cfg or up.trainer_config())
        return cls(Path(root), values["checkpoint_dir"], values["cache_dir"])


def local_argv(name: str, spec: up.TrainingJobSpec, paths: LocalPaths, result_file: Path) -> list[str]:
    """dmlt-train flags: what each Pod runs, with this machine's paths (later flags win)."""
    argv = up.trainer_args(name, spec)
    argv += ["--checkpoint-dir", paths.checkpoint_dir, "--cache-dir", paths.cache_dir]
    argv += ["--result-file", str(result_file)]
    if spec.mlflow.tracking_uri:
        argv += ["--tracking-uri", spec.mlflow.tracking_uri]
    if spec.world_size > 1:
        argv += ["--mode", "ddp", "--world-size", str(spec.world_size)]
    return argv


def read_events(text: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the latest epoch event, every finished event) in a trainer's output."""
    epoch = None
    finished = []
    for line in text.splitlines():
        event = up.parse_event(line)
        if event is None:
            continue
        if event.get("event") == up.EVENT_EPOCH:
            epoch = event
        else:
            finished.append(event)
    return epoch, finished


def _error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and up.parse_event(ln) is None]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["the trainer exited"])[-1][:300]


class _LocalObject:
    """A dmlt spec run on this machine: its name, and where its files go."""

    kind: str
    namespace = "local"

    def __init__(self, name: str, paths: LocalPaths | None) -> None:
        self.name = name
        self.paths = paths or LocalPaths.default()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"

    @property
    def what(self) -> str:
        return f"local {self.kind} {self.name}"


class LocalJob(_LocalObject):
    """A TrainingJob spec running as dmlt-train on this machine."""

    kind = up.KIND

    def __init__(
        self,
        name: str,
        spec: up.TrainingJobSpec,
        paths: LocalPaths | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name, paths)
        self.spec = spec
        self.dir = self.paths.root / RUNS_DIR / name
        self.log_file = self.dir / "output.log"
        self.result_file = self.dir / "result.json"
        self._env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = 0.0

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            up.TRAINER_MODULE,
            *local_argv(self.name, self.spec, self.paths, self.result_file),
        ]

    def start(self) -> LocalJob:
        """Start the trainer process; its output goes to `log_file`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.result_file.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self._env}
        env.update({e.name: e.value for e in self.spec.env if e.value is not None})
        with open(self.log_file, "wb") as log:
            self._proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env)
        self._started = time.monotonic()
        return self

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def output(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def result(self) -> dict[str, Any] | None:
        """The trainer's summary (metrics, history, run id, model URI) once it finished."""
        try:
            return json.loads(self.result_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def state(self) -> JobState:
        text = self.output()
        epoch, finished = read_events(text)
        rc = self.returncode
        phase, message = up.RUNNING, ""
        if rc == 0:
            phase = up.SUCCEEDED
        elif rc is not None:
            phase, message = up.FAILED, f"exit code {rc}: {_error_line(text)}"
        world = self.spec.world_size
        result = self.result() or {}
        return JobState(
            name=self.name,
            namespace=self.namespace,
            phase=phase,
            ready=f"{world}/{world}" if phase == up.RUNNING else None,
            epoch=(epoch or {}).get("epoch"),
            epochs=(epoch or {}).get("epochs") or self.spec.trainer.epochs,
            metrics={
                k: v for k, v in ((epoch or {}).get("metrics") or {}).items() if isinstance(v, int | float)
            },
            message=message,
            mlflow_run_id=(epoch or {}).get("mlflow_run_id") or result.get("mlflow_run_id"),
            result=(finished[-1].get("status") if finished else None) or result.get("status"),
            world_size=world,
        )

    def watch(self, poll: float = 0.5, timeout: float | None = None) -> Iterator[JobState]:
        return watch_states(self.state, poll=poll, timeout=timeout, what=self.what)

    def wait(self, until: str = FINISHED, timeout: float | None = None, poll: float = 0.5) -> JobState:
        return wait_for(self.watch(poll, timeout), until, self.what)

    def logs(self, follow: bool = False, poll: float = 0.5) -> Iterator[LogLine]:
        """The trainer's output (all local ranks write to one file)."""
        shown = 0
        while True:
            done = self.returncode is not None
            lines = self.output().splitlines()
            for line in lines[shown:]:
                yield LogLine("local", 0, line)
            shown = len(lines)
            if not follow or done:
                return
            time.sleep(poll)

    def metrics(self) -> dict[str, float]:
        """Final metrics and test metrics once finished, else the latest epoch's."""
        result = self.result()
        if result is None:
            return dict(self.state().metrics)
        out = dict(result.get("final_metrics") or {})
        out.update({f"test_{k}": v for k, v in (result.get("test_metrics") or {}).items()})
        return out

    def mlflow_run(self) -> MlflowRun | None:
        run_id = self.state().mlflow_run_id
        if not run_id:
            return None
        return fetch_run(self.spec.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), run_id)

    def model_uri(self) -> str | None:
        return (self.result() or {}).get("model_uri")

    def delete(self) -> None:
        """Stop the process if it still runs (its files stay)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


_TRIAL_STATES = {"COMPLETE": "Completed", "PRUNED": "Pruned", "FAIL": "Failed", "RUNNING": "Running"}


class LocalStudy(_LocalObject):
    """A TuningStudy spec run on this machine against SQLite (default ./optuna.db)."""

    kind = up.STUDY_KIND

    def __init__(
        self,
        name: str,
        spec: up.TuningStudySpec,
        storage: str = up.DEFAULT_STORAGE,
        paths: LocalPaths | None = None,
    ) -> None:
        super().__init__(name, paths)
        self.spec = spec
        self.storage = storage
        self.ref = up.StudyRef(name=name, namespace=self.namespace, uid="")
        self._store = up.local_study_store()
        self._handle = self._store.open_study(storage, self.ref.optuna_name, spec.objective.direction, "")
        self._current: tuple[Any, LocalJob] | None = None
        self._message = ""

    def _records(self) -> list[Any]:
        return self._store.list_trials(self._handle)

    def _counts(self) -> dict[str, int]:
        states = [r.state for r in self._records()]
        return {
            "running": states.count("RUNNING"),
            "completed": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"),
            "failed": states.count("FAIL"),
        }

    def _done(self) -> str | None:
        """The terminal phase the study has reached, if any."""
        counts = self._counts()
        if counts["failed"] > self.spec.max_failed_trials:
            self._message = f"{counts['failed']} trial(s) failed, more than maxFailedTrials"
            return up.FAILED
        if counts["completed"] + counts["pruned"] >= self.spec.effective_max_trials and not counts["running"]:
            return up.SUCCEEDED
        return None

    def advance(self) -> None:
        """One step without blocking: tell a finished trial, start the next one."""
        if self._current is not None:
            trial, job = self._current
            if job.returncode is None:
                return
            record = next(r for r in self._records() if r.number == trial.number)
            result = job.state().result
            state, value, self._message = up.decide_local_result(
                record, job.name, job.returncode == 0, result, self.spec.objective.direction
            )
            self._store.tell(self._handle, trial.number, state, value)
            self._current = None
        if self._done() is None:
            self._start_next()

    def _start_next(self) -> None:
        trial = self._store.ask(self._handle, self.spec)
        body = up.build_trial_job(
            self.ref,
            self.spec,
            trial.number,
            trial.params,
            up.SecretKeyRef(name="local"),
            None,
            trial.started,
        )
        job_spec = up.parse_spec(body["spec"])
        job = LocalJob(body["metadata"]["name"], job_spec, self.paths, env={up.STORAGE_ENV: self.storage})
        self._current = (trial, job.start())

    def rows(self) -> list[TrialRow]:
        metric = self.spec.objective.metric
        rows = []
        current = self._current[1] if self._current else None
        for r in self._records():
            epochs = r.user_attrs.get("dmlt.epochs_run") or (len(r.intermediate) or None)
            progress = str(epochs) if epochs is not None else "-"
            value = (
                r.value
                if r.value is not None
                else (r.intermediate[max(r.intermediate)] if r.intermediate else None)
            )
            job = up.trial_job_name(self.name, r.number)
            if current is not None and current.name == job and r.state == "RUNNING":
                live = current.state()
                progress, value = live.progress, live.metrics.get(metric, value)
            rows.append(
                TrialRow(
                    r.number,
                    _TRIAL_STATES.get(r.state, r.state),
                    value,
                    progress,
                    dict(r.params),
                    job,
                    r.mlflow_run_id,
                )
            )
        return rows

    @property
    def best_trial(self) -> BestTrial | None:
        done = [r for r in self._records() if r.state == "COMPLETE" and r.value is not None]
        if not done:
            return None
        pick = max if self.spec.objective.direction == "maximize" else min
        best = pick(done, key=lambda r: r.value)
        return BestTrial(
            best.number,
            best.value,
            dict(best.params),
            up.trial_job_name(self.name, best.number),
            best.mlflow_run_id,
        )

    def trials(self) -> list[TrialRow]:
        return self.rows()

    def state(self) -> StudyState:
        self.advance()
        phase = self._done() or up.RUNNING
        counts = self._counts()
        best = self.best_trial
        return StudyState(
            name=self.name,
            namespace=self.namespace,
            phase=phase,
            message=self._message,
            algorithm=self.spec.algorithm.name,
            objective=self.spec.objective.metric,
            direction=self.spec.objective.direction,
            max_trials=self.spec.effective_max_trials,
            trials_done=f"{counts['completed'] + counts['pruned']}/{self.spec.effective_max_trials}",
            counts=counts,
            best=None
            if best is None
            else {
                "number": best.number,
                "value": best.value,
                "params": best.params,
                "trainingJob": best.training_job,
            },
            trials=tuple(self.rows()),
        )

    def watch(self, poll: float = 0.5, timeout: float | None = None) -> Iterator[StudyState]:
        return watch_states(self.state, poll=poll, timeout=timeout, what=self.what)

    def wait(self, until: str = FINISHED, timeout: float | None = None, poll: float = 0.5) -> StudyState:
        return wait_for(self.watch(poll, timeout), until, self.what)

    def job(self, number: int) -> LocalJob:
        if self._current is not None and self._current[0].number == number:
            return self._current[1]
        raise DmltError(f"trial {number} of {self.what} is not running here")

    def delete(self) -> None:
        """Stop the running trial, if any (the study stays in the database)."""
        if self._current is not None:
            self._current[1].delete()
