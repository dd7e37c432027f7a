"""Identity of dmlt objects and of the children they own: API group, labels, owner references."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GROUP = "dmlt.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
JOB_KIND = "TrainingJob"
JOB_PLURAL = "trainingjobs"
STUDY_KIND = "TuningStudy"
STUDY_PLURAL = "tuningstudies"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "dmlt-operator"
LABEL_COMPONENT = "app.kubernetes.io/component"


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def lean(body: Mapping[str, Any]) -> dict[str, Any]:
    """A plain copy of an object without what only its writers need: managedFields and kubectl's
    last-applied copy of the manifest. They are most of a small object's bytes, and an index
    keeps one copy per object for as long as it exists."""
    out = dict(body)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    out["metadata"] = meta
    return out


def managed_labels(owner_label: str, owner: Any) -> dict[str, Any]:
    """The labels that mark the children of one dmlt object (`owner`: its name, or a selector
    value such as kopf.PRESENT)."""
    return {LABEL_MANAGED_BY: MANAGED_BY, owner_label: owner}


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The identity of a dmlt custom object: enough to name and own its children."""

    name: str
    namespace: str
    uid: str
    generation: int = 1

    @classmethod
    def from_body(cls, body: Any) -> ObjectRef:
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            uid=meta.get("uid") or "",
            generation=int(meta.get("generation") or 1),
        )


def owner_reference(ref: ObjectRef, kind: str) -> dict[str, Any]:
    """Controller reference: the child is garbage-collected with its owner."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_uid(meta: Mapping[str, Any], kind: str) -> str | None:
    """The uid of the object of `kind` that controls the object with metadata `meta`."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind:
            return ref.get("uid")
    return None
