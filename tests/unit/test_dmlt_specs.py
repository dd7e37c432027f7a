"""The `dmlt` client's builders: trainer flags + cluster flags → the operator's spec models → the
custom resource, refused before the apiserver with the operator's own messages, and accepted
by the CRD's schema when the client accepts them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dmlt import specs
from dmlt import upstream as up
from dmlt.cli import run
from dmlt.errors import InvalidSpec

from tests.helpers.crd_admission import cel_violations as violations
from tests.helpers.crd_schema import apply_defaults

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRDS = {
    up.KIND: ROOT / "helm/dmlt/crds/trainingjobs.dmlt.io.yaml",
    up.STUDY_KIND: ROOT / "helm/dmlt/crds/tuningstudies.dmlt.io.yaml",
}
# What the operator sets on every rank itself: not expected to survive the round trip.
OPERATOR_SET = {"run_name", "checkpoint_dir", "cache_dir", "backend", "timeout_s", "experiment"}


def cfg(*argv: str) -> up.RunConfig:
    return up.trainer_parse(list(argv))


def spec_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load(CRDS[kind].read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def admitted(kind: str, spec: dict[str, Any]) -> bool:
    """Whether the CRD accepts the spec: its OpenAPI schema (types, bounds, enums), then its CEL
    rules on the defaulted object (cel-python, as tests/unit/test_crd_schema.py evaluates them)."""
    schema = spec_schema(kind)
    return jsonschema.Draft7Validator(schema).is_valid(spec) and not violations(
        schema, apply_defaults(spec, schema)
    )


# --------------------------------------------------------------------------- flags → spec


def test_trainer_flags_fill_the_trainer_block_and_the_rest_become_extra_args():
    spec = specs.build_job_spec(
        cfg(
            "--dataset",
            "breast_cancer",
            "--epochs",
            "7",
            "--lr",
            "0.01",
            "--hidden-dims",
            "64,32",
            "--threads",
            "1",
            "--no-deterministic",
            "--grad-clip",
            "0.5",
            "--register-model",
            "bc",
        ),
        specs.ClusterOptions(),
    )
    t = spec.trainer
    assert (t.dataset, t.epochs, t.lr, t.hidden_dims) == ("breast_cancer", 7, 0.01, [64, 32])
    assert t.extra_args == [
        "--grad-clip",
        "0.5",
        "--threads",
        "1",
        "--no-deterministic",
        "--register-model",
        "bc",
    ]


def test_trainer_defaults_are_the_trainers_not_the_specs():
    spec = specs.build_job_spec(cfg(), specs.ClusterOptions())
    assert spec.trainer.epochs == up.trainer_config().train.epochs != up.TrainerSpec().epochs


@pytest.mark.parametrize(
    "argv",
    [
        ["--dataset", "breast_cancer", "--epochs", "3", "--batch-size", "64", "--threads", "1"],
        [
            "--lr",
            "0.02",
            "--dropout",
            "0.3",
            "--weight-decay",
            "0.01",
            "--seed",
            "7",
            "--val-fraction",
            "0.2",
            "--early-stopping-patience",
            "2",
            "--no-log-model",
            "--bucket-cap-mb",
            "10",
            "--comm-hook",
            "fp16",
        ],
        ["--dataset", "synthetic", "--n-samples", "5000", "--hidden-dims", "128-64", "--eval-every", "2"],
        ["--dataset", "file", "--data-path", "/data/x.parquet", "--target-column", "label"],
    ],
)
def test_each_rank_runs_exactly_what_dmlt_train_would(argv):
    """The Pod's argv (the operator's own trainer_args) parses back to the same trainer config."""
    original = cfg(*argv)
    spec = specs.build_job_spec(original, specs.ClusterOptions(replicas=2))
    pod_cfg = cfg(*up.trainer_args("job", spec))
    before, after = up.trainer_values(original), up.trainer_values(pod_cfg)
    differ = {k for k in before if before[k] != after[k]} - OPERATOR_SET
    assert differ == set(), {k: (before[k], after[k]) for k in differ}


def test_cluster_flags():
    spec = specs.build_job_spec(
        cfg(),
        specs.ClusterOptions(replicas=3, procs_per_node=2, image="reg/t:1", cpu="500m", memory="2Gi", gpus=1),
    )
    assert (spec.replicas, spec.procs_per_node, spec.world_size, spec.image) == (3, 2, 6, "reg/t:1")
    assert spec.resources.requests == {"cpu": "500m", "memory": "2Gi"}
    assert spec.resources.limits == {"memory": "2Gi", up.GPU_RESOURCE: 1}
    assert spec.effective_backend == "nccl"


def test_ddp_world_size_becomes_ranks_per_pod():
    spec = specs.build_job_spec(cfg("--mode", "ddp", "--world-size", "3"), specs.ClusterOptions())
    assert (spec.replicas, spec.procs_per_node) == (1, 3)


def test_tracking_backend_and_rendezvous_settings_go_to_their_spec_fields():
    spec = specs.build_job_spec(
        cfg(
            "--tracking-uri",
            "http://mlflow:5000",
            "--experiment",
            "exp",
            "--backend",
            "gloo",
            "--timeout-s",
            "120",
        ),
        specs.ClusterOptions(),
    )
    assert (spec.mlflow.tracking_uri, spec.mlflow.experiment) == ("http://mlflow:5000", "exp")
    assert (spec.backend, spec.rendezvous.timeout_seconds) == ("gloo", 120)
    assert "--tracking-uri" not in spec.trainer.extra_args


def test_names():
    assert specs.job_name("given", cfg()) == "given"
    assert specs.job_name(None, cfg("--run-name", "My_Experiment")) == "my-experiment"
    assert specs.job_name(None, cfg()).startswith("train-")
    with pytest.raises(InvalidSpec, match="metadata.name 'Bad_Name'"):
        specs.check_name(up.KIND, "Bad_Name")
    with pytest.raises(InvalidSpec, match="at most 40 characters"):
        specs.check_name(up.STUDY_KIND, "s" * 41)


# --------------------------------------------------------------------------- spec → CR


def test_manifest_is_the_operator_model_and_the_crd_admits_it():
    spec = specs.build_job_spec(
        cfg("--epochs", "3", "--threads", "1"), specs.ClusterOptions(replicas=2, cpu="1")
    )
    body = specs.manifest(up.KIND, "demo", "team-a", specs.spec_to_dict(spec), queue="gpu-queue")
    assert body["apiVersion"] == up.API_VERSION and body["kind"] == up.KIND
    assert body["metadata"]["namespace"] == "team-a"
    assert body["metadata"]["labels"][specs.QUEUE_LABEL] == "gpu-queue"
    assert up.parse_spec(body["spec"]) == spec  # nothing lost: the CRD's defaults are the model's
    assert admitted(up.KIND, body["spec"])


def test_study_manifest_round_trips_and_the_crd_admits_it():
    space = {
        "parameters": [
            specs.parse_param("lr=float:1e-4:1e-2:log"),
            specs.parse_param("hidden_dims=choice:32-16,64-32"),
        ]
    }
    spec = specs.build_study_spec(
        cfg(
            "--epochs",
            "3",
            "--hp-trials",
            "6",
            "--parallel-trials",
            "2",
            "--pruner",
            "hyperband",
            "--objective",
            "val_loss",
            "--direction",
            "minimize",
        ),
        specs.ClusterOptions(),
        space,
        specs.StudyOptions(algorithm="cmaes", registered_model="best", storage_secret="db:uri"),
    )
    assert (spec.max_trials, spec.parallelism, spec.algorithm.name, spec.pruner.name) == (
        6,
        2,
        "cmaes",
        "hyperband",
    )
    assert (spec.objective.metric, spec.objective.direction) == ("val_loss", "minimize")
    assert (spec.storage.secret_ref.name, spec.storage.secret_ref.key) == ("db", "uri")
    assert spec.template.trainer.epochs == 3 and [p.name for p in spec.parameters] == ["lr", "hiddenDims"]
    raw = specs.spec_to_dict(spec)
    assert up.parse_study_spec(raw) == spec
    assert admitted(up.STUDY_KIND, raw)


def test_space_file_forms(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text(yaml.safe_dump([{"name": "lr", "type": "float", "min": 0.001, "max": 0.1}]))
    assert specs.load_space(str(listed))["parameters"][0]["name"] == "lr"
    whole = tmp_path / "study.yaml"
    whole.write_text((ROOT / "examples/tuning.yaml").read_text())
    space = specs.load_space(str(whole))
    assert [p["name"] for p in space["parameters"]][:2] == ["lr", "dropout"] and space["maxTrials"] == 8
    spec = specs.build_study_spec(cfg(), specs.ClusterOptions(), space)
    assert spec.max_trials == 8 and spec.template.trainer.n_samples == 20000  # the file's template wins
    bad = tmp_path / "bad.yaml"
    bad.write_text("parameters: []\nbogus: 1\n")
    with pytest.raises(InvalidSpec, match="unknown keys bogus"):
        specs.load_space(str(bad))


@pytest.mark.parametrize(
    "text, param",
    [
        ("lr=float:1e-4:0.01:log", {"name": "lr", "type": "float", "min": 1e-4, "max": 0.01, "log": True}),
        (
            "batch_size=int:256:1024:step=256",
            {"name": "batchSize", "type": "int", "min": 256, "max": 1024, "step": 256},
        ),
        (
            "hiddenDims=choice:64-32,128-64",
            {"name": "hiddenDims", "type": "categorical", "choices": ["64-32", "128-64"]},
        ),
        ("batchSize=choice:256,512", {"name": "batchSize", "type": "categorical", "choices": [256, 512]}),
    ],
)
def test_param_flag(text, param):
    assert specs.parse_param(text) == param


@pytest.mark.parametrize("text", ["lr", "lr=float", "lr=uniform:0:1", "lr=float:0", "lr=float:0:1:loog"])
def test_bad_param_flag_is_one_line(text):
    with pytest.raises(InvalidSpec, match="--param"):
        specs.parse_param(text)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "argv, cluster",
    [
        (["--lr", "11"], {}),
        (["--epochs", "200000"], {}),
        (["--batch-size", "2000000"], {}),
        ([], {"replicas": 0}),
        ([], {"procs_per_node": 65}),
        (["--backend", "nccl"], {}),
        (["--hidden-dims", ",".join(["8"] * 17)], {}),
    ],
)
def test_refusals_carry_the_operators_message(argv, cluster):
    """Refused before anything is sent, with exactly what the operator says about the same spec;
    where the CRD's schema can tell, admission refuses it too."""
    trainer = cfg(*argv)  # the trainer takes each of these: only the spec's bounds refuse them
    raw = specs.job_spec_dict(trainer, specs.ClusterOptions(**cluster))
    with pytest.raises(up.SpecError) as operator_says:
        up.parse_spec(raw)
    with pytest.raises(InvalidSpec) as client_says:
        specs.build_job_spec(trainer, specs.ClusterOptions(**cluster))
    assert str(client_says.value) == str(operator_says.value)
    assert not admitted(up.KIND, raw)


@pytest.mark.parametrize(
    "space, fragment",
    [
        (
            {"parameters": [{"name": "lr", "type": "float", "min": 0, "max": 0.1, "log": True}]},
            "a log scale needs min > 0",
        ),
        (
            {"parameters": [{"name": "dropout", "type": "categorical", "choices": [0, 1]}]},
            "dropout choices must be numbers in [0, 1)",
        ),
        ({"parameters": [{"name": "epochs", "type": "float", "min": 1, "max": 5}]}, "epochs is an integer"),
        (
            {"parameters": [{"name": "momentum", "type": "float", "min": 0, "max": 1}]},
            "spec.parameters[0].name",
        ),
        (
            {"parameters": [{"name": "lr", "type": "float", "min": 0.1, "max": 0.01}]},
            "min must be less than max",
        ),
    ],
)
def test_study_refusals_carry_the_operators_message(space, fragment):
    raw = specs.study_spec_dict(cfg(), specs.ClusterOptions(), space)
    with pytest.raises(up.SpecError) as operator_says:
        up.parse_study_spec(raw)
    with pytest.raises(InvalidSpec) as client_says:
        specs.build_study_spec(cfg(), specs.ClusterOptions(), space)
    assert str(client_says.value) == str(operator_says.value) and fragment in str(client_says.value)
    assert not admitted(up.STUDY_KIND, raw)


def test_a_study_needs_a_space():
    with pytest.raises(InvalidSpec, match="needs a search space"):
        specs.build_study_spec(cfg(), specs.ClusterOptions(), {})


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--checkpoint-dir", "/data"], "--checkpoint-dir cannot be set for a cluster run"),
        (["--result-file", "r.json"], "--result-file cannot be set for a cluster run"),
        (["--mode", "hp_search"], "use `dmlt tune`"),
    ],
)
def test_cluster_managed_settings_are_refused(argv, fragment):
    with pytest.raises(InvalidSpec, match=fragment.replace("`", ".")):
        specs.build_job_spec(cfg(*argv), specs.ClusterOptions())
    if argv[0] != "--mode":
        specs.build_job_spec(cfg(*argv), specs.ClusterOptions(), local=True)  # a local run takes its paths


@pytest.mark.parametrize("quantity", ["4GB", "3gi", "1.5.2", "lots"])
def test_bad_quantities(quantity):
    with pytest.raises(InvalidSpec, match="not a Kubernetes quantity"):
        specs.build_job_spec(cfg(), specs.ClusterOptions(memory=quantity))


@pytest.mark.parametrize("quantity", ["4Gi", "500m", "2", "1.5", "1e3", "128974848"])
def test_good_quantities(quantity):
    specs.build_job_spec(cfg(), specs.ClusterOptions(cpu=quantity))


# --------------------------------------------------------------------------- the command line


def test_dry_run_prints_the_object_without_a_cluster(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    import io

    out = io.StringIO()
    assert (
        run(["train", "--dry-run", "--name", "d", "--replicas", "2", "--epochs", "3", "--queue", "q"], out)
        == 0
    )
    body = yaml.safe_load(out.getvalue())
    assert body["metadata"] == {
        "name": "d",
        "namespace": "default",
        "labels": {"app.kubernetes.io/created-by": "dmlt-cli", specs.QUEUE_LABEL: "q"},
    }
    assert body["spec"]["replicas"] == 2 and body["spec"]["trainer"]["epochs"] == 3


@pytest.mark.parametrize(
    "argv, fragment, code",
    [
        (["train", "--dry-run", "--bogus", "1"], "unrecognized arguments: --bogus 1", 2),
        (["train", "--dry-run", "--epochs"], "argument --epochs: expected one argument", 2),
        (["train", "--dry-run", "--replicas", "two"], "argument --replicas: invalid int value", 2),
        (
            ["train", "--dry-run", "--lr", "11"],
            "spec.trainer.lr: Input should be less than or equal to 10",
            2,
        ),
        (["tune", "--dry-run"], "needs a search space", 2),
        (
            ["tune", "--dry-run", "--param", "lr=float:1:2", "--storage", "sqlite:///x.db"],
            "--storage is for --local",
            2,
        ),
        (["wait", "x", "--timeout", "soon"], "is not a duration", 2),
        (["logs", "a", "b", "c"], "expected [KIND] NAME", 2),
        (["get", "widgets", "x"], "unknown kind 'widgets'", 2),
    ],
)
def test_mistakes_are_one_line_and_a_nonzero_exit(argv, fragment, code, capsys, monkeypatch, tmp_path):
    from dmlt.cli import main

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("dmlt: error: ") and fragment in err and err.count("\n") == 1, err


def test_no_cluster_is_one_line(capsys, monkeypatch, tmp_path):
    from dmlt.cli import main

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    assert main(["get"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("dmlt: error: no cluster configured") and "--local" in err and err.count("\n") == 1


def test_a_file_dataset_fills_the_specs_data_path_and_target():
    spec = specs.build_job_spec(
        cfg("--dataset", "file", "--data-path", "d.csv", "--target", "y"), specs.ClusterOptions()
    )
    assert (spec.trainer.dataset, spec.trainer.data_path, spec.trainer.target) == ("file", "d.csv", "y")
    assert "--target" not in spec.trainer.extra_args and "--data-path" not in spec.trainer.extra_args
