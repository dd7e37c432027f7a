"""dmlt operator: the TrainingJob custom resource, reconciled by kopf."""

GROUP = "dmlt.io"
VERSION = "v1alpha1"
PLURAL = "trainingjobs"
KIND = "TrainingJob"
API_VERSION = f"{GROUP}/{VERSION}"
