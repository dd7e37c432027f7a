"""Slice 5 of issue 15: rank 0's Pod gets a projected token for its job's audience and the
receiver's URL and CA; the settings come from the environment."""

from __future__ import annotations

import pytest
from dmlt_contract import PROGRESS_CA_ENV, PROGRESS_TOKEN_FILE_ENV, PROGRESS_URL_ENV
from dmlt_operator.core.config import OperatorConfig, ProgressConfig
from dmlt_operator.trainingjob import build
from dmlt_operator.trainingjob.build import JobRef
from dmlt_operator.trainingjob.spec import parse_spec

pytestmark = pytest.mark.unit

JOB = JobRef(name="ddp", namespace="team-a", uid="uid-7", generation=1)
PEM = "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----"
PROGRESS = ProgressConfig(url="https://dmlt-progress.dmlt.svc:8443", ca_pem=PEM)
SPEC = parse_spec({"image": "img", "replicas": 2})


CFG = OperatorConfig(progress=PROGRESS)


def pod(rank, cfg=CFG):
    return build.build_rank_pod(JOB, SPEC, rank, 0, cfg)


def env_of(p):
    return {e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]}


def test_rank0_gets_the_audience_bound_token_and_where_to_push():
    p = pod(0)
    volume = next(v for v in p["spec"]["volumes"] if v["name"] == build.PROGRESS_TOKEN_VOLUME)
    assert volume["projected"]["sources"] == [
        {"serviceAccountToken": {"audience": "dmlt.io/progress/team-a/ddp/uid-7", "expirationSeconds": 3600,
                                 "path": "token"}}
    ]  # fmt: skip
    mount = next(
        m for m in p["spec"]["containers"][0]["volumeMounts"] if m["name"] == build.PROGRESS_TOKEN_VOLUME
    )
    assert mount == {
        "name": build.PROGRESS_TOKEN_VOLUME,
        "mountPath": build.PROGRESS_TOKEN_DIR,
        "readOnly": True,
    }
    env = env_of(p)
    assert env[PROGRESS_URL_ENV] == "https://dmlt-progress.dmlt.svc:8443/v1/progress/team-a/ddp/uid-7"
    assert env[PROGRESS_TOKEN_FILE_ENV] == "/var/run/secrets/dmlt.io/progress/token"
    assert env[PROGRESS_CA_ENV] == PEM
    # Still no credential for the apiserver itself.
    assert p["spec"]["automountServiceAccountToken"] is False
    assert p["spec"]["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_other_ranks_and_a_disabled_receiver_get_nothing():
    for p in (pod(1), pod(0, OperatorConfig())):
        assert all(v["name"] != build.PROGRESS_TOKEN_VOLUME for v in p["spec"]["volumes"])
        assert PROGRESS_URL_ENV not in env_of(p)


def test_progress_settings_from_env(tmp_path):
    assert not OperatorConfig.from_env({}).progress.enabled
    (tmp_path / "ca.crt").write_text(PEM + "\n")
    env = {"DMLT_PROGRESS_SERVICE_URL": "https://rx.dmlt.svc:8443/", "DMLT_PROGRESS_TLS_DIR": str(tmp_path),
           "DMLT_PROGRESS_PORT": "9443", "DMLT_PROGRESS_TOKEN_EXPIRATION_SECONDS": "900"}  # fmt: skip
    progress = OperatorConfig.from_env(env).progress
    assert progress.enabled and progress.url == "https://rx.dmlt.svc:8443"
    assert (progress.port, progress.token_expiration_s, progress.ca_pem) == (9443, 900, PEM)
    assert progress.cert_file == str(tmp_path / "tls.crt") and progress.key_file == str(tmp_path / "tls.key")
    with pytest.raises(ValueError, match="ca.crt"):
        OperatorConfig.from_env({**env, "DMLT_PROGRESS_TLS_DIR": str(tmp_path / "none")})
    with pytest.raises(ValueError, match="https"):
        OperatorConfig.from_env({**env, "DMLT_PROGRESS_SERVICE_URL": "http://rx"})
    with pytest.raises(ValueError, match=">= 600"):
        OperatorConfig.from_env({**env, "DMLT_PROGRESS_TOKEN_EXPIRATION_SECONDS": "60"})
