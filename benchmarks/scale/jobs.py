"""The N TrainingJobs of a scale run: examples/ddp.yaml's job, renamed, with an emptyDir
checkpoint (the trainer never runs on simulated nodes, so no claim is needed)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ddp.yaml"


def example_job(path: Path = EXAMPLE) -> dict[str, Any]:
    """The TrainingJob document of the example manifest."""
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "TrainingJob":
            return doc
    raise ValueError(f"no TrainingJob in {path}")


def job_name(index: int, prefix: str = "scale") -> str:
    return f"{prefix}-{index:04d}"


def scale_jobs(count: int, namespace: str, template: dict[str, Any]) -> list[dict[str, Any]]:
    """`count` copies of `template`, named scale-0000 …, in `namespace`, checkpointing to an emptyDir."""
    jobs = []
    for i in range(count):
        job = copy.deepcopy(template)
        job["metadata"] = {"name": job_name(i), "namespace": namespace}
        job["spec"]["checkpoint"] = {"emptyDir": {}}
        jobs.append(job)
    return jobs


def manifest(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)
