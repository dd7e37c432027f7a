"""Pure object builders: the headless Service and each rank's Pod."""

from __future__ import annotations

import pytest
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.core.objects import JOB_KIND, owner_reference
from dmlt_operator.trainingjob import build as res
from dmlt_operator.trainingjob.spec import parse_spec

pytestmark = pytest.mark.unit

JOB = res.JobRef(name="ddp", namespace="team-a", uid="uid-1", generation=3)
CFG = OperatorConfig(default_tracking_uri="http://mlflow.dmlt.svc:5000")


def spec(**over):
    raw = {"image": "dmlt-trainer:dev", "replicas": 2, **over}
    return parse_spec(raw)


def env_of(pod):
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


def test_job_ref_from_body():
    body = {"metadata": {"name": "n", "namespace": "ns", "uid": "u", "generation": 4}}
    assert res.JobRef.from_body(body) == res.JobRef("n", "ns", "u", 4)


def test_names_are_deterministic():
    assert res.pod_name("ddp", 1) == "ddp-1"
    assert res.service_name("ddp") == "ddp"
    assert res.master_addr("ddp") == "ddp-0.ddp"


def test_owner_reference_is_a_controller_ref():
    ref = owner_reference(JOB, JOB_KIND)
    assert ref == {
        "apiVersion": "dmlt.io/v1alpha1",
        "kind": "TrainingJob",
        "name": "ddp",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_service_is_headless_and_publishes_unready_addresses():
    svc = res.build_service(JOB, spec())
    assert svc["metadata"]["name"] == "ddp"
    assert svc["metadata"]["namespace"] == "team-a"
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/managed-by": "dmlt-operator",
        "dmlt.io/job-name": "ddp",
    }
    assert svc["spec"]["ports"][0]["port"] == 29500


def test_rank_pod_identity_and_labels():
    pod = res.build_rank_pod(JOB, spec(), 1, 2, CFG)
    meta = pod["metadata"]
    assert meta["name"] == "ddp-1"
    assert meta["namespace"] == "team-a"
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "dmlt-operator",
        "app.kubernetes.io/component": "trainer",
        "dmlt.io/job-name": "ddp",
        "dmlt.io/rank": "1",
        "dmlt.io/attempt": "2",
    }
    assert meta["ownerReferences"] == [owner_reference(JOB, JOB_KIND)]
    # The Service selects every rank's Pod.
    svc = res.build_service(JOB, spec())
    assert svc["spec"]["selector"].items() <= meta["labels"].items()
    assert pod["spec"]["hostname"] == "ddp-1"
    assert pod["spec"]["subdomain"] == "ddp"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_torchrun_static_rendezvous_command():
    pod = res.build_rank_pod(JOB, spec(procsPerNode=2), 1, 0, CFG)
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[:3] == ["python", "-m", "torch.distributed.run"]
    for flag in (
        "--nnodes=2",
        "--node-rank=1",
        "--nproc-per-node=2",
        "--master-addr=ddp-0.ddp",
        "--master-port=29500",
        "--max-restarts=0",
        "--rdzv-conf=timeout=900",
        "--rdzv-id=ddp-0",
    ):
        assert flag in cmd
    # No --rdzv-backend: torchrun's default with --master-addr is the static rendezvous.
    assert not any(a.startswith("--rdzv-backend") or a.startswith("--rdzv_backend") for a in cmd)
    i = cmd.index("-m", 3)
    assert cmd[i + 1] == "dmlt_trainer.cli"


def test_trainer_flags_follow_the_spec():
    s = spec(
        trainer={
            "dataset": "breast_cancer",
            "epochs": 4,
            "batchSize": 128,
            "lr": 0.001,
            "hiddenDims": [64, 32],
            "dropout": 0.1,
            "weightDecay": 0.0,
            "nSamples": 2000,
            "extraArgs": ["--eval-every", "2"],
        },
        mlflow={"experiment": "exp1"},
    )
    args = res.trainer_args("ddp", s)
    pairs = dict(zip(args[0::2], args[1::2], strict=False))
    assert pairs["--run-name"] == "ddp"
    assert pairs["--dataset"] == "breast_cancer"
    assert pairs["--epochs"] == "4"
    assert pairs["--batch-size"] == "128"
    assert float(pairs["--lr"]) == 0.001
    assert pairs["--hidden-dims"] == "64,32"
    assert float(pairs["--dropout"]) == 0.1
    assert float(pairs["--weight-decay"]) == 0.0
    assert pairs["--checkpoint-dir"] == res.CHECKPOINT_DIR
    assert pairs["--backend"] == "gloo"
    assert pairs["--experiment"] == "exp1"
    assert pairs["--timeout-s"] == "900"
    assert pairs["--n-samples"] == "2000"
    assert args[-2:] == ["--eval-every", "2"]


def test_env_defaults_and_user_override():
    pod = res.build_rank_pod(JOB, spec(), 0, 0, CFG)
    env = env_of(pod)
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.dmlt.svc:5000"
    assert env["GLOO_SOCKET_IFNAME"]["value"] == "eth0"
    assert env["HOME"]["value"] == "/tmp"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"

    s = spec(
        mlflow={"trackingUri": "http://other:5000"},
        env=[{"name": "GLOO_SOCKET_IFNAME", "value": "net1"}, {"name": "X", "value": "1"}],
    )
    env = env_of(res.build_rank_pod(JOB, s, 0, 0, CFG))
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://other:5000"
    assert env["GLOO_SOCKET_IFNAME"]["value"] == "net1"
    names = [e["name"] for e in res.build_rank_pod(JOB, s, 0, 0, CFG)["spec"]["containers"][0]["env"]]
    assert len(names) == len(set(names))


def test_no_tracking_uri_and_no_ifname_when_unset():
    cfg = OperatorConfig(default_tracking_uri="", gloo_socket_ifname="")
    env = env_of(res.build_rank_pod(JOB, spec(), 0, 0, cfg))
    assert "MLFLOW_TRACKING_URI" not in env
    assert "GLOO_SOCKET_IFNAME" not in env


def test_pod_security():
    pod = res.build_rank_pod(JOB, spec(), 0, 0, CFG)
    pod_sc = pod["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 10001
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    c_sc = pod["spec"]["containers"][0]["securityContext"]
    assert c_sc["allowPrivilegeEscalation"] is False
    assert c_sc["capabilities"] == {"drop": ["ALL"]}
    assert c_sc["readOnlyRootFilesystem"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    mounts = {m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert {"/tmp", res.CHECKPOINT_DIR} <= mounts


def test_image_resources_and_scheduling():
    s = spec(
        imagePullPolicy="Never",
        resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        nodeSelector={"pool": "train"},
        tolerations=[{"key": "k", "operator": "Exists"}],
        serviceAccountName="trainer",
    )
    pod = res.build_rank_pod(JOB, s, 0, 0, CFG)
    c = pod["spec"]["containers"][0]
    assert c["image"] == "dmlt-trainer:dev"
    assert c["imagePullPolicy"] == "Never"
    assert c["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "2Gi"},
    }
    assert pod["spec"]["nodeSelector"] == {"pool": "train"}
    assert pod["spec"]["tolerations"] == [{"key": "k", "operator": "Exists"}]
    assert pod["spec"]["serviceAccountName"] == "trainer"


def test_default_pull_policy_and_no_resources_key():
    pod = res.build_rank_pod(JOB, spec(), 0, 0, CFG)
    assert pod["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert "resources" not in pod["spec"]["containers"][0]


def test_pvc_checkpoint_only_on_rank0():
    s = spec(checkpoint={"persistentVolumeClaim": {"claimName": "ckpt"}})
    vols0 = {v["name"]: v for v in res.build_rank_pod(JOB, s, 0, 0, CFG)["spec"]["volumes"]}
    vols1 = {v["name"]: v for v in res.build_rank_pod(JOB, s, 1, 0, CFG)["spec"]["volumes"]}
    assert vols0["checkpoints"] == {
        "name": "checkpoints",
        "persistentVolumeClaim": {"claimName": "ckpt"},
    }
    assert "emptyDir" in vols1["checkpoints"]


def test_empty_dir_checkpoint_size_limit():
    s = spec(checkpoint={"emptyDir": {"sizeLimit": "1Gi"}})
    vols = {v["name"]: v for v in res.build_rank_pod(JOB, s, 0, 0, CFG)["spec"]["volumes"]}
    assert vols["checkpoints"]["emptyDir"] == {"sizeLimit": "1Gi"}


def test_nccl_gets_shared_memory_volume():
    s = spec(backend="nccl", resources={"limits": {"nvidia.com/gpu": 1}})
    pod = res.build_rank_pod(JOB, s, 0, 0, CFG)
    assert "--backend" in pod["spec"]["containers"][0]["command"]
    assert any(v["name"] == "dshm" for v in pod["spec"]["volumes"])
    gloo = res.build_rank_pod(JOB, spec(), 0, 0, CFG)
    assert not any(v["name"] == "dshm" for v in gloo["spec"]["volumes"])


def test_rank_out_of_range():
    with pytest.raises(ValueError):
        res.build_rank_pod(JOB, spec(), 2, 0, CFG)


def test_builders_are_pure():
    s = spec()
    assert res.build_rank_pod(JOB, s, 0, 1, CFG) == res.build_rank_pod(JOB, s, 0, 1, CFG)
    assert res.build_service(JOB, s) == res.build_service(JOB, s)


def test_trainer_cli_accepts_every_flag_the_operator_passes():
    """The Pod's arguments parse with dmlt-train's own parser into the intended config."""
    cli = pytest.importorskip("dmlt_trainer.cli")
    s = spec(
        trainer={"dataset": "synthetic", "nSamples": 5000, "epochs": 3, "batchSize": 64,
                 "hiddenDims": [16, 8], "dropout": 0.05, "lr": 0.01, "weightDecay": 0.001,
                 "seed": 7, "earlyStoppingPatience": 2},
        mlflow={"experiment": "e"},
        rendezvous={"timeoutSeconds": 300},
    )  # fmt: skip
    cfg = cli.parse_config(res.trainer_args("ddp", s))
    assert cfg.run_name == "ddp"
    assert cfg.data.dataset == "synthetic" and cfg.data.n_samples == 5000
    assert cfg.data.cache_dir == res.DATA_CACHE_DIR
    assert cfg.model.hidden_dims == [16, 8] and cfg.model.dropout == 0.05
    assert cfg.optim.lr == 0.01 and cfg.optim.weight_decay == 0.001
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 64 and cfg.train.seed == 7
    assert cfg.train.early_stopping_patience == 2
    assert cfg.train.checkpoint_dir == res.CHECKPOINT_DIR
    assert cfg.dist.backend == "gloo" and cfg.dist.timeout_s == 300
    assert cfg.tracking.experiment == "e"
