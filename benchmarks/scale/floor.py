"""The floor of a scale run: what the control plane needs for N jobs when no operator spends any
CPU. The jobs' children (the headless Service and one Pod per rank, from the operator's own
builders) are created by `kubectl create` processes at the same moment as `kubectl apply` of the
jobs, with no rate limit. Left out, so the floor is lower than any operator can reach: the
owner references (the jobs' uids are not known yet), the status writes and the Events."""

from __future__ import annotations

from typing import Any

from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.trainingjob import build
from dmlt_operator.trainingjob.spec import parse_spec


def children(jobs: list[dict[str, Any]], ranks: int) -> list[dict[str, Any]]:
    """Each job's Service and rank Pods as the operator builds them, without owner references."""
    cfg = OperatorConfig.from_env({})
    docs: list[dict[str, Any]] = []
    for job in jobs:
        meta = job["metadata"]
        ref = build.JobRef(name=meta["name"], namespace=meta["namespace"], uid="")
        spec = parse_spec(job["spec"])
        docs.append(build.build_service(ref, spec))
        docs.extend(build.build_rank_pod(ref, spec, rank, 0, cfg) for rank in range(ranks))
    for doc in docs:
        doc["metadata"].pop("ownerReferences", None)
    return docs


def split(docs: list[dict[str, Any]], parts: int) -> list[list[dict[str, Any]]]:
    """`docs` dealt round-robin into `parts` lists (one per parallel client)."""
    return [docs[i::parts] for i in range(parts)]
