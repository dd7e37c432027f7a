"""The progress receiver: trainer rank 0 POSTs each epoch event here (docs/operator.md, "Progress").

Every operator replica serves it (HTTPS, behind one Service), leader or not: whichever replica
gets a push writes it. Per request:

1. the path names the job: `/v1/progress/<namespace>/<job>/<job uid>`;
2. the bearer token is a projected service-account token whose audience is that job
   instance's (`dmlt_contract.progress_audience`): a TokenReview with `spec.audiences=[aud]`
   must find it authenticated, for that audience, for a ServiceAccount of that namespace, and
   bound to the job's rank 0 Pod. The verdict is cached by sha256(token) until the token
   expires, at most 10 minutes (a bound token dies with its Pod, which only the apiserver
   knows), so a Pod costs at most one TokenReview per 10 minutes;
3. the body is an epoch event; an older (attempt, epoch) than the last accepted is stale;
4. status.progress, status.metrics and status.mlflowRunId are patched (a JSON patch that first
   tests the job's uid), at most once per job per 0.5 s: a report arriving sooner replaces the
   one waiting (latest wins).

Nothing else of the job is written here; the planner carries these keys as they are.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from dmlt_contract import EVENT_EPOCH, PROGRESS_PATH_PREFIX, parse_event, progress_audience
from dmlt_operator.core.kube import Review
from dmlt_operator.trainingjob.build import pod_name
from dmlt_operator.trainingjob.progress import (
    TrainerReport,
    clean_metrics,
    clean_run_id,
    epoch_fields,
    progress_of,
)

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
CACHE_TTL_S = 600.0
"""How long a TokenReview's yes is trusted (at most; never past the token's own expiry)."""
NEGATIVE_TTL_S = 10.0
"""How long a no is remembered: garbage costs one TokenReview per 10 s, not one per request."""
WRITE_INTERVAL_S = 0.5
MAX_WRITE_TRIES = 3
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
SA_PREFIX = "system:serviceaccount:"
NAME_RE = r"[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?"
PATH_RE = re.compile(
    rf"^{re.escape(PROGRESS_PATH_PREFIX)}/(?P<ns>{NAME_RE})/(?P<job>{NAME_RE})/(?P<uid>[A-Za-z0-9-]{{1,64}})/?$"
)


@dataclass(frozen=True, slots=True)
class JobKey:
    namespace: str
    name: str
    uid: str

    @property
    def audience(self) -> str:
        return progress_audience(self.namespace, self.name, self.uid)


class ProgressKube(Protocol):
    """The two API calls of the receiver (core/kube.py's ProgressApi makes them; tests fake them)."""

    def review_token(self, token: str, audience: str) -> Review: ...
    def patch_job_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> bool: ...


def parse_path(path: str) -> JobKey | None:
    match = PATH_RE.match(path.split("?", 1)[0])
    return JobKey(match["ns"], match["job"], match["uid"]) if match else None


def unverified_claims(token: str) -> dict[str, Any]:
    """The JWT's claims, read without verifying (empty when it is no JWT): only to bound the
    cache and to turn away, before any TokenReview, a token that cannot be for this job."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def token_expiry(token: str) -> float | None:
    """The JWT's `exp` (seconds since the epoch), read without verifying: only to bound the cache."""
    exp = unverified_claims(token).get("exp")
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def not_for(token: str, key: JobKey, now: float) -> str | None:
    """Why the token cannot be for `key` on its face (audience, expiry), so that made-up tokens
    cost no TokenReview; None when only the apiserver can tell."""
    claims = unverified_claims(token)
    audiences = claims.get("aud")
    audiences = [audiences] if isinstance(audiences, str) else audiences
    if not isinstance(audiences, list) or key.audience not in audiences:
        return "token not for this job's audience"
    exp = token_expiry(token)
    if exp is None or exp <= now:
        return "token expired"
    return None


def refusal(review: Review, key: JobKey) -> str | None:
    """Why a reviewed token may not report this job's progress; None when it may."""
    if not review.authenticated:
        return "token not authenticated"
    if key.audience not in review.audiences:
        return "token not for this job's audience"
    if not review.username.startswith(f"{SA_PREFIX}{key.namespace}:"):
        return "token not of a ServiceAccount of the job's namespace"
    pods = review.extra.get(POD_NAME_EXTRA) or ()
    if tuple(pods) != (pod_name(key.name, 0),):
        return "token not bound to the job's rank 0 Pod"
    return None


class TokenVerifier:
    """TokenReviews, cached by (sha256(token), audience)."""

    def __init__(
        self,
        kube: ProgressKube,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        max_entries: int = 20_000,
    ) -> None:
        self.kube, self.clock, self.wall, self.max_entries = kube, clock, wall, max_entries
        self.reviews = 0
        self._cache: dict[tuple[str, str], tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def check(self, token: str, key: JobKey) -> str | None:
        """Why `token` may not report `key`'s progress; None when it may."""
        cache_key = (hashlib.sha256(token.encode()).hexdigest(), key.audience)
        now = self.clock()
        with self._lock:
            cached = self._cache.get(cache_key)
        if cached is not None and cached[0] > now:
            return cached[1]
        on_its_face = not_for(token, key, self.wall())
        if on_its_face is not None:
            return on_its_face
        self.reviews += 1
        verdict = refusal(self.kube.review_token(token, key.audience), key)
        ttl = NEGATIVE_TTL_S if verdict else self._trust_for(token)
        with self._lock:
            if len(self._cache) >= self.max_entries:
                self._evict(now)
            self._cache[cache_key] = (now + ttl, verdict)
        return verdict

    def _trust_for(self, token: str) -> float:
        exp = token_expiry(token)
        return CACHE_TTL_S if exp is None else max(0.0, min(CACHE_TTL_S, exp - self.wall()))

    def _evict(self, now: float) -> None:
        for k in [k for k, (until, _) in self._cache.items() if until <= now]:
            del self._cache[k]
        if len(self._cache) >= self.max_entries:
            self._cache.clear()


@dataclass(frozen=True, slots=True)
class Report:
    """One accepted epoch report: its order, and the status keys it sets."""

    attempt: int
    epoch: int
    status: dict[str, Any]


def parse_report(body: bytes) -> Report | None:
    """The epoch event in a POST body, cleaned as the log parser cleans it; None if it is none."""
    try:
        obj = parse_event(body.decode("utf-8"))
    except UnicodeDecodeError:
        return None
    if obj is None or obj["event"] != EVENT_EPOCH or (fields := epoch_fields(obj)) is None:
        return None
    attempt = obj.get("attempt", 0)
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        return None
    epoch, epochs = fields[0], fields[1]
    report = TrainerReport(
        epoch=min(epoch, epochs) if epochs else epoch,
        epochs=epochs,
        metrics=clean_metrics(obj.get("metrics")),
        mlflow_run_id=clean_run_id(obj.get("mlflow_run_id")),
    )
    status: dict[str, Any] = {"progress": progress_of(report)}
    if report.metrics:
        status["metrics"] = dict(report.metrics)
    if report.mlflow_run_id:
        status["mlflowRunId"] = report.mlflow_run_id
    return Report(attempt, epoch, status)


@dataclass(slots=True)
class _JobState:
    last: tuple[int, int]
    """(attempt, epoch) of the newest report accepted."""
    written_at: float = float("-inf")
    pending: Report | None = None
    tries: int = 0
    touched: float = 0.0


class ProgressWriter:
    """Accepts reports and writes each job's latest at most once per `interval_s`."""

    def __init__(
        self,
        kube: ProgressKube,
        interval_s: float = WRITE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube, self.interval_s, self.clock = kube, interval_s, clock
        self.writes = 0
        self._jobs: dict[JobKey, _JobState] = {}
        self._cond = threading.Condition()
        self._stopped = False

    def offer(self, key: JobKey, report: Report) -> bool:
        """Queue the report; False when it is stale (not newer than the last accepted)."""
        order = (report.attempt, report.epoch)
        with self._cond:
            now = self.clock()
            state = self._jobs.get(key)
            if state is not None and order <= state.last:
                return False
            if state is None:
                state = self._jobs[key] = _JobState(order)
            state.last, state.pending, state.tries, state.touched = order, report, 0, now
            self._cond.notify()
        return True

    def due(self) -> tuple[list[tuple[JobKey, Report]], float | None]:
        """The reports whose job may be written now (taken off the queue), and how long until
        the next one may: None when none waits."""
        now, ready, wait = self.clock(), [], None
        with self._cond:
            for key, state in self._jobs.items():
                if state.pending is None:
                    continue
                left = state.written_at + self.interval_s - now
                if left <= 0:
                    ready.append((key, state.pending))
                    state.pending, state.written_at = None, now
                else:
                    wait = left if wait is None else min(wait, left)
            self._forget_idle(now)
        return ready, wait

    def write(self, key: JobKey, report: Report) -> None:
        try:
            if not self.kube.patch_job_status(key.namespace, key.name, key.uid, report.status):
                log.info(
                    "Progress of %s/%s dropped: the job is gone or was recreated", key.namespace, key.name
                )
            self.writes += 1
        except Exception as exc:
            log.warning("Cannot write the progress of %s/%s: %s", key.namespace, key.name, exc)
            self._retry(key, report)

    def _retry(self, key: JobKey, report: Report) -> None:
        with self._cond:
            state = self._jobs.get(key)
            if state is not None and state.pending is None and state.tries + 1 < MAX_WRITE_TRIES:
                state.pending, state.tries = report, state.tries + 1
                self._cond.notify()

    def _forget_idle(self, now: float) -> None:
        """Jobs silent for an hour (finished, deleted) leave the table."""
        for key in [k for k, s in self._jobs.items() if s.pending is None and now - s.touched > 3600]:
            del self._jobs[key]

    def run(self) -> None:
        """The writer thread: write what is due, sleep until the next is."""
        while not self._stopped:
            ready, wait = self.due()
            for key, report in ready:
                self.write(key, report)
            if ready:
                continue
            with self._cond:
                if not self._stopped:
                    self._cond.wait(wait)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


@dataclass(frozen=True, slots=True)
class Answer:
    code: int
    message: str


class Receiver:
    """One POST's checks, in order, over the verifier and the writer (no HTTP in here)."""

    def __init__(self, verifier: TokenVerifier, writer: ProgressWriter) -> None:
        self.verifier, self.writer = verifier, writer

    def handle(self, path: str, authorization: str | None, body: bytes) -> Answer:
        key = parse_path(path)
        if key is None:
            return Answer(404, "not a progress path")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Answer(401, "bearer token required")
        try:
            denied = self.verifier.check(token.strip(), key)
        except Exception as exc:
            log.warning("TokenReview failed: %s", exc)
            return Answer(503, "cannot review the token now")
        if denied:
            return Answer(403, denied)
        report = parse_report(body)
        if report is None:
            return Answer(400, "body is not an epoch event")
        if not self.writer.offer(key, report):
            return Answer(409, "stale: a newer epoch was reported")
        return Answer(202, "accepted")


class _Handler(BaseHTTPRequestHandler):
    server: ProgressHTTPServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 -- http.server's name
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._answer(Answer(413, "body too large"))
            return
        body = self.rfile.read(length)
        self._answer(self.server.receiver.handle(self.path, self.headers.get("Authorization"), body))

    def _answer(self, answer: Answer) -> None:
        # One request per connection: a trainer pushes once an epoch, and no idle or half-read
        # connection holds a thread.
        self.close_connection = True
        data = json.dumps({"message": answer.message}).encode()
        self.send_response(answer.code)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("progress %s " + fmt, self.address_string(), *args)


class ProgressHTTPServer(ThreadingHTTPServer):
    """HTTPS: each connection's TLS handshake runs in its own thread, never in the accept loop."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], receiver: Receiver, tls: ssl.SSLContext) -> None:
        self.receiver, self.tls = receiver, tls
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        try:
            request = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address, exc)
            return
        super().finish_request(request, client_address)


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


@dataclass(slots=True)
class RunningReceiver:
    server: ProgressHTTPServer
    writer: ProgressWriter
    verifier: TokenVerifier

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.writer.stop()


def serve(kube: ProgressKube, port: int, tls: ssl.SSLContext, host: str = "0.0.0.0") -> RunningReceiver:
    """Start the receiver (its HTTPS server and its writer) in daemon threads."""
    verifier, writer = TokenVerifier(kube), ProgressWriter(kube)
    server = ProgressHTTPServer((host, port), Receiver(verifier, writer), tls)
    threading.Thread(target=server.serve_forever, name="progress-receiver", daemon=True).start()
    threading.Thread(target=writer.run, name="progress-writer", daemon=True).start()
    log.info(
        "Progress receiver listening on https://%s:%d%s/",
        host,
        server.server_address[1],
        PROGRESS_PATH_PREFIX,
    )
    return RunningReceiver(server, writer, verifier)
