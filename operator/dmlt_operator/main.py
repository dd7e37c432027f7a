"""`dmlt-operator`: run the TrainingJob and TuningStudy operator (kopf) with a liveness endpoint
and metrics."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import kopf

from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.trainingjob import handlers as trainingjob_handlers
from dmlt_operator.tuningstudy import handlers as tuningstudy_handlers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmlt-operator",
        description="Reconcile dmlt.io TrainingJobs (per-rank Pods running torchrun, gang "
        "restarts, status with progress) and TuningStudies (an Optuna study in a database, one "
        "TrainingJob per trial). Settings come from DMLT_* environment variables.",
    )
    parser.add_argument(
        "-n", "--namespace", action="append", default=[],
        help="serve only this namespace (repeatable); default: DMLT_NAMESPACES or all",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format", choices=("plain", "full", "json"), default="full", help="log line format"
    )
    return parser


def build_registry(cfg: OperatorConfig) -> kopf.OperatorRegistry:
    """Every handler of both resources, registered with the settings read at start-up."""
    registry = kopf.OperatorRegistry()
    # kopf logs in the way the kubernetes client does (ServiceAccount, else kubeconfig), as
    # kopf's own default registry would.
    kopf.on.login(registry=registry)(kopf.login_via_client)
    trainingjob_handlers.register(registry, cfg)
    tuningstudy_handlers.register(registry, cfg)
    return registry


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = OperatorConfig.from_env()
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat[args.log_format.upper()])

    namespaces = tuple(args.namespace) or cfg.namespaces
    kopf.run(
        standalone=True,  # one replica (Deployment strategy Recreate): no peering needed
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{cfg.health_port}/healthz",
        memo=kopf.Memo(config=cfg),
        registry=build_registry(cfg),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
