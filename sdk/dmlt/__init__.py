"""dmlt's Python client: submit, watch and read TrainingJobs and TuningStudies, in a cluster
or on this machine, from a script, a notebook or the `dmlt` command.

    from dmlt import Client
    job = Client().train({"dataset": "breast_cancer", "epochs": 5}, replicas=2)
    job.wait()
    print(job.metrics(), job.mlflow_run().url)
"""

from dmlt.client import Client
from dmlt.errors import (
    ClusterUnavailable,
    ConditionUnreachable,
    CrdMissing,
    DmltError,
    Forbidden,
    InvalidSpec,
    NotFound,
    OperatorNotRunning,
    Refused,
    WaitTimeout,
)
from dmlt.jobs import BestTrial, Job, Study
from dmlt.local import LocalJob, LocalStudy
from dmlt.logs import LogLine
from dmlt.mlflow_runs import MlflowRun
from dmlt.observe import JobState, StudyState, TrialRow
from dmlt.specs import ClusterOptions, StudyOptions

__all__ = [
    "BestTrial",
    "Client",
    "ClusterOptions",
    "ClusterUnavailable",
    "ConditionUnreachable",
    "CrdMissing",
    "DmltError",
    "Forbidden",
    "InvalidSpec",
    "Job",
    "JobState",
    "LocalJob",
    "LocalStudy",
    "LogLine",
    "MlflowRun",
    "NotFound",
    "OperatorNotRunning",
    "Refused",
    "Study",
    "StudyOptions",
    "StudyState",
    "TrialRow",
    "WaitTimeout",
]
