"""`dmlt-operator`: run the TrainingJob and TuningStudy operator (kopf) with a liveness endpoint
and metrics."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kopf

from dmlt_operator.core import metrics
from dmlt_operator.core.config import OperatorConfig
from dmlt_operator.core.kube import LeaseApi, ProgressApi, load_config
from dmlt_operator.core.leader import Elector, lead_while_holding
from dmlt_operator.trainingjob import handlers as trainingjob_handlers
from dmlt_operator.trainingjob import progress_server
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


def operator_kwargs(cfg: OperatorConfig, namespaces: tuple[str, ...], memo: kopf.Memo) -> dict[str, Any]:
    """kopf.run's / kopf.operator's arguments. Always standalone: with leader election only the
    Lease holder runs kopf, so kopf's own peering is not needed (docs/operator.md)."""
    return {
        "standalone": True,
        "clusterwide": not namespaces,
        "namespaces": namespaces,
        "liveness_endpoint": f"http://0.0.0.0:{cfg.health_port}/healthz",
        "memo": memo,
        "registry": build_registry(cfg),
    }


class _StandbyHealth(BaseHTTPRequestHandler):
    """/healthz of a standby: live and ready while it waits (kopf serves it once leading)."""

    def do_GET(self) -> None:  # noqa: N802 -- http.server's name
        code = 200 if self.path.split("?")[0] == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"leader": false}' if code == 200 else b"{}")

    def log_message(self, *_: Any) -> None:  # probes every few seconds: not worth a log line
        pass


def serve_standby_health(port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("0.0.0.0", port), _StandbyHealth)
    threading.Thread(target=server.serve_forever, name="standby-health", daemon=True).start()
    return server


def start_progress_receiver(cfg: OperatorConfig) -> progress_server.RunningReceiver | None:
    """The progress receiver, on every replica and before any election: whichever replica the
    Service sends a push to writes it. None when no receiver is configured (progress from logs)."""
    progress = cfg.progress
    if not progress.enabled:
        return None
    load_config()
    tls = progress_server.tls_context(progress.cert_file, progress.key_file)
    return progress_server.serve(ProgressApi(), progress.port, tls)


def replica_identity() -> str:
    """Unique per process: the Pod's name (the chart gives DMLT_POD_NAME) and a random suffix, so a
    restarted container never mistakes its predecessor's Lease for its own."""
    name = os.environ.get("DMLT_POD_NAME", "").strip() or socket.gethostname()
    return f"{name}_{uuid.uuid4().hex[:8]}"


def _lost_lease() -> None:
    """Another replica may act from now on: stop at once, without clean-up (client-go exits the
    same way); the kubelet restarts this container as a standby."""
    logging.getLogger(__name__).critical("Lost the Lease: exiting so that only one replica acts")
    logging.shutdown()
    os._exit(1)


async def run_elected(cfg: OperatorConfig, namespaces: tuple[str, ...]) -> int:
    """Stand by (live, metrics served) until this replica holds the Lease, then run kopf."""
    election = cfg.leader_election
    metrics.serve(cfg.metrics_port)
    metrics.LEADER.set(0)
    load_config()
    start_progress_receiver(cfg)
    store = LeaseApi(election.lease_namespace, election.lease_name, election.retry_period_s)
    elector = Elector(election, replica_identity(), store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # kopf installs its own once it runs
    health = serve_standby_health(cfg.health_port)
    try:
        if not await elector.acquire(stop):
            return 0
    finally:
        health.shutdown()
        health.server_close()
    metrics.LEADER.set(1)
    memo = kopf.Memo(config=cfg, metrics_served=True)
    kwargs = operator_kwargs(cfg, namespaces, memo)

    async def lead() -> None:
        await kopf.operator(**kwargs)

    try:
        return await lead_while_holding(elector, lead, stop, _lost_lease)
    finally:
        metrics.LEADER.set(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = OperatorConfig.from_env()
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat[args.log_format.upper()])

    namespaces = tuple(args.namespace) or cfg.namespaces
    if cfg.leader_election.enabled:
        return asyncio.run(run_elected(cfg, namespaces))
    metrics.LEADER.set(1)  # alone: always the one acting
    start_progress_receiver(cfg)
    kopf.run(**operator_kwargs(cfg, namespaces, kopf.Memo(config=cfg)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
