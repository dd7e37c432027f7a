"""Paths and names the e2e helpers and tests share (one definition each)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "dmlt"
CRD_FILE = CHART / "crds" / "trainingjobs.dmlt.io.yaml"
STUDY_CRD_FILE = CHART / "crds" / "tuningstudies.dmlt.io.yaml"
EXAMPLE = ROOT / "examples" / "ddp.yaml"
STUDY_EXAMPLE = ROOT / "examples" / "tuning.yaml"

GROUP, VERSION, PLURAL = "dmlt.io", "v1alpha1", "trainingjobs"
STUDY_PLURAL = "tuningstudies"
CRD_NAME = f"{PLURAL}.{GROUP}"
STUDY_CRD_NAME = f"{STUDY_PLURAL}.{GROUP}"
LABEL_JOB = "dmlt.io/job-name"
LABEL_RANK = "dmlt.io/rank"
LABEL_ATTEMPT = "dmlt.io/attempt"
LABEL_STUDY = "dmlt.io/study"
TRAINER_CONTAINER = "trainer"
TRAINER_UID = 10001
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io"
