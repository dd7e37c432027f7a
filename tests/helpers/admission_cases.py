"""The admission cases: plausible mistakes that must be refused at the door, each with the field
its refusal must name, and edge cases that must be accepted (boundaries, the longest valid
names, every optional block filled).

tests/integration/test_admission.py sends them to a real kube-apiserver; the unit tier
(tests/unit/test_admission_rules.py) evaluates the CRDs' own checks on them and runs the
operator's spec models over them.
"""

from __future__ import annotations

from typing import Any

JOB_PLURAL, STUDY_PLURAL = "trainingjobs", "tuningstudies"
GPU = "nvidia.com/gpu"
LONG_SUBDOMAIN = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
LONG_PREFIX_KEY = f"{LONG_SUBDOMAIN}/{'k' * 63}"  # the longest label key: 253 + 1 + 63


def job_spec(**spec: Any) -> dict[str, Any]:
    return {"image": "dmlt-trainer:dev", **spec}


def study_spec(**spec: Any) -> dict[str, Any]:
    return {
        "parameters": [{"name": "lr", "type": "float", "min": 0.0001, "max": 0.1, "log": True}],
        "trialTemplate": job_spec(),
        **spec,
    }


def params(*parameters: dict[str, Any], **spec: Any) -> tuple[str, dict[str, Any]]:
    return STUDY_PLURAL, study_spec(parameters=list(parameters), **spec)


def job(**spec: Any) -> tuple[str, dict[str, Any]]:
    return JOB_PLURAL, job_spec(**spec)


def env(*variables: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return job(env=list(variables))


def secret_ref(**ref: Any) -> dict[str, Any]:
    return {"name": "V", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token", **ref}}}


def resources(**res: Any) -> tuple[str, dict[str, Any]]:
    return job(resources=res)


def toleration(**tol: Any) -> tuple[str, dict[str, Any]]:
    return job(tolerations=[tol])


def selector(**labels: Any) -> tuple[str, dict[str, Any]]:
    return job(nodeSelector=labels)


def trainer(**settings: Any) -> tuple[str, dict[str, Any]]:
    return job(trainer=settings)


# (id, (plural, spec), field the message must name, words of the message)
INVALID: list[tuple[str, tuple[str, dict[str, Any]], str, str]] = [
    # ---------------------------------------------------------------- resource quantities
    ("memory-1GB", resources(limits={"memory": "1GB"}), "spec.resources.limits[memory]", "quantity"),
    ("memory-3gi", resources(requests={"memory": "3gi"}), "spec.resources.requests[memory]", "quantity"),
    ("cpu-negative-string", resources(requests={"cpu": "-1"}), "spec.resources.requests[cpu]", "quantity"),
    ("cpu-negative-int", resources(limits={"cpu": -2}), "spec.resources.limits[cpu]", "quantity"),
    ("cpu-two-dots", resources(requests={"cpu": "1.5.0"}), "spec.resources.requests[cpu]", "quantity"),
    ("cpu-empty", resources(requests={"cpu": ""}), "spec.resources.requests[cpu]", "quantity"),
    ("cpu-space", resources(requests={"cpu": "1 "}), "spec.resources.requests[cpu]", "quantity"),
    ("memory-float", resources(requests={"memory": 0.5}), "spec.resources.requests.memory", "integer"),
    ("sizeLimit-space", job(checkpoint={"emptyDir": {"sizeLimit": "10 GiB"}}),
     "spec.checkpoint.emptyDir.sizeLimit", "quantity"),
    ("sizeLimit-word", job(checkpoint={"emptyDir": {"sizeLimit": "big"}}),
     "spec.checkpoint.emptyDir.sizeLimit", "quantity"),
    ("cpu-request-over-limit", resources(requests={"cpu": "2"}, limits={"cpu": "1500m"}),
     "spec.resources.requests", "less than or equal to its limit"),
    ("memory-request-over-limit", resources(requests={"memory": "2Gi"}, limits={"memory": "2G"}),
     "spec.resources.requests", "less than or equal to its limit"),
    ("resource-unknown-name", resources(limits={"gpu": 1}), "spec.resources.limits", "resource names"),
    ("resource-kubernetes-io", resources(limits={"kubernetes.io/foo": 1}), "spec.resources.limits",
     "resource names"),
    ("resource-bad-domain", resources(requests={"Nvidia.com/gpu": 1}), "spec.resources.requests",
     "resource names"),
    ("gpu-fraction", resources(limits={GPU: "500m"}), "spec.resources.limits", "whole numbers"),
    ("gpu-request-without-limit", resources(requests={GPU: 1}), "spec.resources.requests",
     "needs an equal limit"),
    ("hugepages-request-without-limit", resources(requests={"hugepages-2Mi": "2Mi", "memory": "1Gi"}),
     "spec.resources.requests", "needs an equal limit"),
    ("gpu-request-below-limit", resources(requests={GPU: 1}, limits={GPU: 2}), "spec.resources.requests",
     "needs an equal limit"),
    ("divisor-1GB", env({"name": "MEM", "valueFrom": {"resourceFieldRef": {
        "resource": "limits.memory", "divisor": "1GB"}}}),
     "spec.env[0].valueFrom.resourceFieldRef.divisor", "quantity"),  # fmt: skip
    # ---------------------------------------------------------------- env names and the list
    ("env-name-equals", env({"name": "A=1", "value": "x"}), "spec.env[0].name", "should match"),
    ("env-name-empty", env({"name": "", "value": "x"}), "spec.env[0].name", "at least 1"),
    ("env-name-tab", env({"name": "A\tB", "value": "x"}), "spec.env[0].name", "should match"),
    ("env-name-non-ascii", env({"name": "GRÖSSE", "value": "x"}), "spec.env[0].name", "should match"),
    ("env-name-newline", env({"name": "A\n", "value": "x"}), "spec.env[0].name", "should match"),
    ("env-name-too-long", env({"name": "A" * 254, "value": "x"}), "spec.env[0].name", "253"),
    ("env-duplicate", env({"name": "A", "value": "1"}, {"name": "A", "value": "2"}), "spec.env[1]",
     "Duplicate value"),
    ("env-too-many", env(*({"name": f"V{i}", "value": "x"} for i in range(129))), "spec.env",
     "must have at most 128 items"),
    # ---------------------------------------------------------------- env valueFrom
    ("valueFrom-empty", env({"name": "V", "valueFrom": {}}), "spec.env[0].valueFrom", "exactly one of"),
    ("valueFrom-typo", env({"name": "V", "valueFrom": {"secretKeyref": {"name": "s", "key": "k"}}}),
     "spec.env[0].valueFrom", "exactly one of"),
    ("valueFrom-two-sources", env({"name": "V", "valueFrom": {
        "secretKeyRef": {"name": "s", "key": "k"}, "fieldRef": {"fieldPath": "metadata.name"}}}),
     "spec.env[0].valueFrom", "exactly one of"),  # fmt: skip
    ("value-and-valueFrom", env({**secret_ref(), "value": "x"}), "spec.env[0]",
     "only one of value and valueFrom"),
    ("secretKeyRef-no-key", env({"name": "V", "valueFrom": {"secretKeyRef": {"name": "s"}}}),
     "spec.env[0].valueFrom.secretKeyRef.key", "Required value"),
    ("secretKeyRef-no-name", env({"name": "V", "valueFrom": {"secretKeyRef": {"key": "k"}}}),
     "spec.env[0].valueFrom.secretKeyRef.name", "Required value"),
    ("secretKeyRef-bad-name", env(secret_ref(name="Bad_Name")),
     "spec.env[0].valueFrom.secretKeyRef.name", "should match"),
    ("secretKeyRef-bad-key", env(secret_ref(key="a/b")), "spec.env[0].valueFrom.secretKeyRef.key",
     "should match"),
    ("secretKeyRef-optional-string", env(secret_ref(optional="yes")),
     "spec.env[0].valueFrom.secretKeyRef.optional", "boolean"),
    ("configMapKeyRef-upper-name", env({"name": "V", "valueFrom": {"configMapKeyRef": {
        "name": "Settings", "key": "k"}}}), "spec.env[0].valueFrom.configMapKeyRef.name", "should match"),
    ("fieldRef-unknown-path", env({"name": "V", "valueFrom": {"fieldRef": {"fieldPath": "metadata.foo"}}}),
     "spec.env[0].valueFrom.fieldRef.fieldPath", "should match"),
    ("fieldRef-no-path", env({"name": "V", "valueFrom": {"fieldRef": {"apiVersion": "v1"}}}),
     "spec.env[0].valueFrom.fieldRef.fieldPath", "Required value"),
    ("fieldRef-api-v2", env({"name": "V", "valueFrom": {"fieldRef": {
        "apiVersion": "v2", "fieldPath": "metadata.name"}}}),
     "spec.env[0].valueFrom.fieldRef.apiVersion", "Unsupported value"),  # fmt: skip
    ("resourceFieldRef-gpu", env({"name": "V", "valueFrom": {"resourceFieldRef": {
        "resource": "limits.gpu"}}}), "spec.env[0].valueFrom.resourceFieldRef.resource", "should match"),
    ("resourceFieldRef-bad-container", env({"name": "V", "valueFrom": {"resourceFieldRef": {
        "resource": "limits.cpu", "containerName": "Trainer"}}}),
     "spec.env[0].valueFrom.resourceFieldRef.containerName", "should match"),  # fmt: skip
    # ---------------------------------------------------------------- tolerations
    ("toleration-operator-In", toleration(key="k", operator="In", value="v"),
     "spec.tolerations[0].operator", "Unsupported value"),
    ("toleration-effect-NoRun", toleration(key="k", value="v", effect="NoRun"),
     "spec.tolerations[0].effect", "Unsupported value"),
    ("toleration-no-key-Equal", toleration(value="v"), "spec.tolerations[0]", "needs operator Exists"),
    ("toleration-Exists-with-value", toleration(key="k", operator="Exists", value="v"),
     "spec.tolerations[0]", "takes no value"),
    ("toleration-seconds-NoSchedule", toleration(key="k", effect="NoSchedule", tolerationSeconds=60),
     "spec.tolerations[0]", "needs effect NoExecute"),
    ("toleration-seconds-string", toleration(key="k", effect="NoExecute", tolerationSeconds="60"),
     "spec.tolerations[0].tolerationSeconds", "integer"),
    ("toleration-bad-key", toleration(key="bad key", operator="Exists"), "spec.tolerations[0].key",
     "label key"),
    ("toleration-bad-value", toleration(key="k", value="bad value!"), "spec.tolerations[0].value",
     "should match"),
    # ---------------------------------------------------------------- references to other objects
    ("serviceAccount-underscore", job(serviceAccountName="Bad_SA"), "spec.serviceAccountName",
     "should match"),
    ("serviceAccount-double-dot", job(serviceAccountName="sa..x"), "spec.serviceAccountName",
     "should match"),
    ("serviceAccount-too-long", job(serviceAccountName="a" * 254), "spec.serviceAccountName", "253"),
    ("claim-upper", job(checkpoint={"persistentVolumeClaim": {"claimName": "My-Claim"}}),
     "spec.checkpoint.persistentVolumeClaim.claimName", "should match"),
    ("claim-leading-dash", job(checkpoint={"persistentVolumeClaim": {"claimName": "-claim"}}),
     "spec.checkpoint.persistentVolumeClaim.claimName", "should match"),
    ("study-secret-underscore", (STUDY_PLURAL, study_spec(storage={"secretRef": {"name": "db_url"}})),
     "spec.storage.secretRef.name", "should match"),
    # ---------------------------------------------------------------- nodeSelector
    ("nodeSelector-key-space", selector(**{"bad key": "v"}), "spec.nodeSelector", "label key"),
    ("nodeSelector-key-two-slashes", selector(**{"a/b/c": "v"}), "spec.nodeSelector", "label key"),
    ("nodeSelector-key-long-prefix", selector(**{"a" * 254 + "/x": "v"}), "spec.nodeSelector", "label key"),
    ("nodeSelector-key-long-name", selector(**{"a" * 64: "v"}), "spec.nodeSelector", "label key"),
    ("nodeSelector-key-upper-prefix", selector(**{"Example.com/zone": "v"}), "spec.nodeSelector",
     "label key"),
    ("nodeSelector-value-space", selector(zone="bad value"), "spec.nodeSelector.zone", "should match"),
    ("nodeSelector-value-long", selector(zone="a" * 64), "spec.nodeSelector.zone", "63"),
    ("nodeSelector-value-dash", selector(zone="-a"), "spec.nodeSelector.zone", "should match"),
    # ---------------------------------------------------------------- the trainer's closed sets
    ("dataset-mnist", trainer(dataset="mnist"), "spec.trainer.dataset", "Unsupported value"),
    ("dataset-case", trainer(dataset="Synthetic"), "spec.trainer.dataset", "Unsupported value"),
    ("file-without-path", trainer(dataset="file", target="y"), "spec.trainer.dataset",
     "needs trainer.dataPath and trainer.target"),
    ("file-without-target", trainer(dataset="file", dataPath="/data/x.parquet"), "spec.trainer.dataset",
     "needs trainer.dataPath and trainer.target"),
    ("dataPath-empty", trainer(dataPath=""), "spec.trainer.dataPath", "at least 1"),
    ("template-dataset", (STUDY_PLURAL, study_spec(trialTemplate=job_spec(trainer={"dataset": "iris"}))),
     "spec.trialTemplate.trainer.dataset", "Unsupported value"),
    ("template-env-name", (STUDY_PLURAL, study_spec(trialTemplate=job_spec(env=[{"name": "A=1"}]))),
     "spec.trialTemplate.env[0].name", "should match"),
    ("template-memory", (STUDY_PLURAL, study_spec(trialTemplate=job_spec(
        resources={"limits": {"memory": "1GB"}}))),
     "spec.trialTemplate.resources.limits[memory]", "quantity"),
    # ---------------------------------------------------------------- TuningStudy search spaces
    ("choices-duplicate-int", params({"name": "batchSize", "type": "categorical", "choices": [64, 64]}),
     "spec.parameters[0].choices[1]", "Duplicate value"),
    ("choices-duplicate-string", params({"name": "lr", "type": "categorical",
                                         "choices": ["0.1", "0.2", "0.1"]}),
     "spec.parameters[0].choices[2]", "Duplicate value"),
    ("batchSize-min-1", params({"name": "batchSize", "type": "int", "min": 1, "max": 64}),
     "spec.parameters[0]", "batchSize must stay in [2, 1000000]"),
    ("batchSize-max", params({"name": "batchSize", "type": "int", "min": 2, "max": 2000000}),
     "spec.parameters[0]", "batchSize must stay in [2, 1000000]"),
    ("epochs-min-0", params({"name": "epochs", "type": "int", "min": 0, "max": 5}),
     "spec.parameters[0]", "epochs must stay in [1, 100000]"),
    ("epochs-max", params({"name": "epochs", "type": "int", "min": 1, "max": 100001}),
     "spec.parameters[0]", "epochs must stay in [1, 100000]"),
    ("lr-max-20", params({"name": "lr", "type": "float", "min": 0.1, "max": 20}),
     "spec.parameters[0]", "lr must stay in (0, 10]"),
    ("lr-min-0", params({"name": "lr", "type": "float", "min": 0, "max": 0.1}),
     "spec.parameters[0]", "lr must stay in (0, 10]"),
    ("weightDecay-negative", params({"name": "weightDecay", "type": "float", "min": -0.1, "max": 0.1}),
     "spec.parameters[0]", "weightDecay must not be negative"),
    ("dropout-max-1", params({"name": "dropout", "type": "float", "min": 0.5, "max": 1.0}),
     "spec.parameters[0]", "dropout must stay in [0, 1)"),
    ("batchSize-choice-1", params({"name": "batchSize", "type": "categorical", "choices": [1, 64]}),
     "spec.parameters[0].choices", "batchSize choices must be whole numbers"),
    ("batchSize-choice-word", params({"name": "batchSize", "type": "categorical", "choices": ["big"]}),
     "spec.parameters[0].choices", "batchSize choices must be whole numbers"),
    ("epochs-choice-fraction", params({"name": "epochs", "type": "categorical", "choices": ["1.5"]}),
     "spec.parameters[0].choices", "epochs choices must be whole numbers"),
    ("lr-choice-zero", params({"name": "lr", "type": "categorical", "choices": ["0"]}),
     "spec.parameters[0].choices", "lr choices must be numbers in (0, 10]"),
    ("lr-choice-word", params({"name": "lr", "type": "categorical", "choices": ["fast"]}),
     "spec.parameters[0].choices", "lr choices must be numbers in (0, 10]"),
    ("dropout-choice-1", params({"name": "dropout", "type": "categorical", "choices": [1]}),
     "spec.parameters[0].choices", "dropout choices must be numbers in [0, 1)"),
    ("weightDecay-choice-negative", params({"name": "weightDecay", "type": "categorical",
                                            "choices": ["-0.1"]}),
     "spec.parameters[0].choices", "weightDecay choices must be numbers"),
    ("hiddenDims-choice-zero-width", params({"name": "hiddenDims", "type": "categorical",
                                             "choices": ["512-0"]}),
     "spec.parameters[0].choices", "hiddenDims choices are widths"),
    ("hiddenDims-choice-commas", params({"name": "hiddenDims", "type": "categorical",
                                         "choices": ["512,256"]}),
     "spec.parameters[0].choices", "hiddenDims choices are widths"),
    ("hiddenDims-choice-too-wide", params({"name": "hiddenDims", "type": "categorical",
                                           "choices": [70000]}),
     "spec.parameters[0].choices", "hiddenDims choices are widths"),
    ("hiddenDims-choice-17-layers", params({"name": "hiddenDims", "type": "categorical",
                                            "choices": ["-".join(["8"] * 17)]}),
     "spec.parameters[0].choices", "hiddenDims choices are widths"),
    ("int-fractional-min", params({"name": "epochs", "type": "int", "min": 1.5, "max": 5}),
     "spec.parameters[0]", "whole numbers"),
    ("step-over-range", params({"name": "batchSize", "type": "int", "min": 8, "max": 16, "step": 16}),
     "spec.parameters[0].step", "step must not exceed max - min"),
    ("grid-one-huge-parameter", params({"name": "batchSize", "type": "int", "min": 2, "max": 200001},
                                       algorithm={"name": "grid"}),
     "spec.parameters", "a grid may have at most 100000 points"),
    ("grid-product", params({"name": "epochs", "type": "int", "min": 1, "max": 10000},
                            {"name": "batchSize", "type": "int", "min": 2, "max": 100},
                            algorithm={"name": "grid"}),
     "spec.parameters", "a grid may have at most 100000 points"),
    ("grid-float-steps", params({"name": "lr", "type": "float", "min": 0.001, "max": 1, "step": 0.0001},
                                {"name": "dropout", "type": "float", "min": 0, "max": 0.5, "step": 0.01},
                                algorithm={"name": "grid"}),
     "spec.parameters", "a grid may have at most 100000 points"),
]  # fmt: skip

# A pod spec with every optional block filled, at its limits.
FULL_ENV = [
    {"name": "PLAIN", "value": "x"},
    {"name": "EMPTY_VALUE_WITH_SOURCE", "value": "",
     "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    {"name": "POD_LABEL", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                     "fieldPath": "metadata.labels['dmlt.io/job-name']"}}},
    {"name": "POD_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
    {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"containerName": "trainer",
                                                             "resource": "limits.cpu", "divisor": "1m"}}},
    {"name": "MEM_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": 1}}},
    {"name": "TOKEN",
     "valueFrom": {"secretKeyRef": {"name": LONG_SUBDOMAIN, "key": "a.b-c_D", "optional": True}}},
    {"name": "SETTING",
     "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "lr", "optional": False}}},
]  # fmt: skip
FULL_JOB = job_spec(
    replicas=2,
    backend="nccl",
    resources={
        "requests": {"cpu": "500m", "memory": "1.5Gi", "ephemeral-storage": "1e9", GPU: 1,
                     "hugepages-2Mi": "2Mi"},
        "limits": {"cpu": 2, "memory": "2Gi", GPU: "1", "example.com/fpga": 3, "hugepages-2Mi": "2Mi"},
    },
    trainer={"dataset": "file", "dataPath": "/data/train.parquet", "target": "label"},
    env=FULL_ENV,
    checkpoint={"persistentVolumeClaim": {"claimName": LONG_SUBDOMAIN}},
    nodeSelector={LONG_PREFIX_KEY: "v" * 63, "kubernetes.io/arch": "amd64", "plain": ""},
    tolerations=[
        {"operator": "Exists"},
        {"key": LONG_PREFIX_KEY, "operator": "Equal", "value": "a" * 63, "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
         "tolerationSeconds": 300},
        {"key": "dedicated", "value": "ml", "effect": ""},
    ],
    serviceAccountName=LONG_SUBDOMAIN,
)  # fmt: skip

VALID: list[tuple[str, tuple[str, dict[str, Any]]]] = [
    ("every-optional-block", (JOB_PLURAL, FULL_JOB)),
    ("quantity-spellings", resources(
        requests={"cpu": ".5", "memory": "+1Ki", "ephemeral-storage": "1E"},
        limits={"cpu": "0.5", "memory": "1024", "ephemeral-storage": "2E"})),
    ("requests-equal-limits-zero", resources(requests={"cpu": 0, "memory": "0"}, limits={"cpu": "0"})),
    ("relaxed-env-names", env({"name": "1starts with a digit", "value": "x"},
                              {"name": "a.b-c:d~!", "value": "y"}, {"name": "N" * 253, "value": ""})),
    ("env-128-entries", env(*({"name": f"VAR_{i}", "value": str(i)} for i in range(128)))),
    ("sizeLimit-int-and-string", job(checkpoint={"emptyDir": {"sizeLimit": "1Gi"}})),
    ("sizeLimit-integer", job(checkpoint={"emptyDir": {"sizeLimit": 1073741824}})),
    ("every-dataset", job(trainer={"dataset": "covertype", "dataPath": "/data/covtype.csv"})),
    ("shortest-names", job(serviceAccountName="a", checkpoint={"persistentVolumeClaim": {"claimName": "0"}},
                           nodeSelector={"a": "b"})),
    ("study-template-filled", (STUDY_PLURAL, study_spec(trialTemplate=FULL_JOB,
                                                         storage={"secretRef": {"name": LONG_SUBDOMAIN}}))),
    ("study-integer-bounds", params(
        {"name": "batchSize", "type": "int", "min": 2, "max": 1000000, "log": True},
        {"name": "epochs", "type": "int", "min": 1, "max": 100000, "step": 1},
        {"name": "lr", "type": "float", "min": 1e-9, "max": 10},
        {"name": "dropout", "type": "float", "min": 0, "max": 0.999},
        {"name": "weightDecay", "type": "float", "min": 0, "max": 1e6})),
    ("study-choices-at-bounds", params(
        {"name": "batchSize", "type": "categorical", "choices": [2, "1000000", "64"]},
        {"name": "epochs", "type": "categorical", "choices": [1, "100000"]},
        {"name": "lr", "type": "categorical", "choices": ["10", "1e-5", 1, ".5", "5."]},
        {"name": "dropout", "type": "categorical", "choices": [0, "0", "0.999"]},
        {"name": "weightDecay", "type": "categorical", "choices": ["0", 0, "1E+3"]},
        {"name": "hiddenDims", "type": "categorical",
         "choices": [1, 65536, "65536", "-".join(["1"] * 16), "512-256-128"]})),
    ("study-64-choices", params({"name": "batchSize", "type": "categorical", "choices": list(range(2, 66))})),
    ("grid-exactly-100000", params({"name": "batchSize", "type": "int", "min": 2, "max": 100001},
                                   algorithm={"name": "grid"}, maxTrials=10000)),
    ("grid-product-at-limit", params({"name": "epochs", "type": "int", "min": 1, "max": 500},
                                     {"name": "batchSize", "type": "int", "min": 10, "max": 1000, "step": 10},
                                     {"name": "dropout", "type": "float", "min": 0, "max": 0.1, "step": 0.1},
                                     algorithm={"name": "grid"})),
]  # fmt: skip


def operator_parses(plural: str, spec: dict[str, Any]) -> None:
    """Parse `spec` with the operator's model for `plural` (raises SpecError)."""
    from dmlt_operator.trainingjob.spec import parse_spec
    from dmlt_operator.tuningstudy.spec import parse_study_spec

    (parse_spec if plural == JOB_PLURAL else parse_study_spec)(spec)
