"""The errors the client raises: each carries one line a person can act on."""

from __future__ import annotations


class DmltError(Exception):
    """Base of every error the client raises on purpose; `str()` is one line for the user."""

    exit_code = 3


class InvalidSpec(DmltError):
    """Bad flags, config or search space: refused before anything is sent to the cluster."""

    exit_code = 2


class ClusterUnavailable(DmltError):
    """No kubeconfig, or the apiserver does not answer."""


class CrdMissing(DmltError):
    """The cluster does not know TrainingJob / TuningStudy: the dmlt chart is not installed."""


class OperatorNotRunning(DmltError):
    """No dmlt operator is running for the namespace: nothing would act on the object."""


class Forbidden(DmltError):
    """The apiserver refused the request for this user (RBAC)."""


class NotFound(DmltError):
    """No object of that name."""


class Refused(DmltError):
    """The apiserver refused the object (admission: CRD schema or CEL rules)."""

    exit_code = 2


class WaitTimeout(DmltError, TimeoutError):
    """The wait's timeout passed before the condition held."""

    exit_code = 124


class ConditionUnreachable(DmltError):
    """The object ended in a state where the awaited condition can no longer hold."""

    exit_code = 1
