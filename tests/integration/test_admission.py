"""Admission against a real kube-apiserver: every mistake in the table is refused at the door,
with the offending field named, and every edge case in the valid table is accepted.

Each case is sent as a server-side dry run (`dryRun=All`): the apiserver runs the whole
admission chain (structural schema, defaults, patterns, enums, CEL with Kubernetes' quantity
and string libraries) and stores nothing. The cases live in tests/admission_cases.py; the unit tier
runs the operator's spec models over them too.

Needs kube-apiserver and etcd (see test_operator_apiserver.py, whose `cluster` fixture this
module reuses).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.helpers.admission_cases import INVALID, JOB_PLURAL, VALID, operator_parses
from tests.helpers.apiserver import NS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]


def submit(
    api: dict[str, Any], plural: str, spec: dict[str, Any], name: str = "admission-case"
) -> dict[str, Any]:
    kind = "TrainingJob" if plural == JOB_PLURAL else "TuningStudy"
    body = {"apiVersion": "dmlt.io/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": NS},
            "spec": copy.deepcopy(spec)}  # fmt: skip
    return api["custom"].create_namespaced_custom_object(
        "dmlt.io", "v1alpha1", NS, plural, body, dry_run="All"
    )


@pytest.mark.parametrize(("case", "obj", "field", "words"), INVALID, ids=[c[0] for c in INVALID])
def test_the_apiserver_refuses(cluster, case, obj, field, words):  # noqa: F811
    from kubernetes.client.exceptions import ApiException

    plural, spec = obj
    with pytest.raises(ApiException) as err:
        submit(cluster, plural, spec)
    assert err.value.status == 422, err.value.body
    body = err.value.body if isinstance(err.value.body, str) else err.value.body.decode()
    assert f"{field}:" in body or f'"field":"{field}"' in body, body
    assert words in body.replace('\\"', '"'), body


@pytest.mark.parametrize(("case", "obj"), VALID, ids=[c[0] for c in VALID])
def test_the_apiserver_accepts(cluster, case, obj):  # noqa: F811
    plural, spec = obj
    stored = submit(cluster, plural, spec, name="a" * (50 if plural == JOB_PLURAL else 40))
    assert stored["spec"]["image" if plural == JOB_PLURAL else "trialTemplate"]
    operator_parses(plural, stored["spec"])
