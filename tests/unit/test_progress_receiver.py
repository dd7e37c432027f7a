"""Slice 5 of issue 15: the progress receiver's checks, cache, stale epochs and rate limit, and
the trainer's push client, over real HTTPS against a fake TokenReview API."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
from dmlt_contract import progress_audience, progress_path
from dmlt_operator.core.kube import Review
from dmlt_operator.trainingjob import progress_server as ps
from dmlt_trainer.progress_push import ProgressPusher, https_sender

from tests.helpers.tls import make_tls

pytestmark = pytest.mark.unit

KEY = ps.JobKey("ns", "ddp", "uid-1")
POD_EXTRA = ps.POD_NAME_EXTRA


def jwt(exp: float | None = None, tag: str = "", aud: str | None = None) -> str:
    claims = {"sub": tag} | ({"exp": exp} if exp is not None else {}) | ({"aud": [aud]} if aud else {})
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"e30.{payload}.sig"


class FakeProgressKube:
    """The receiver's two calls (ProgressKube), as the apiserver answers them: a token is valid
    only for the audiences it was issued for, and carries its Pod's name."""

    def __init__(self):
        self.tokens: dict[str, tuple[str, str, str]] = {}
        self.reviews: list[tuple[str, str]] = []
        self.patches: list[tuple[str, str, str, dict]] = []
        self.fail_next_patch = False
        self.lock = threading.Lock()

    def issue(self, audience: str, pod: str, namespace: str = "ns", exp: float | None = None) -> str:
        # Kubernetes puts the audience and an expiry in every token it issues.
        exp = time.time() + 3600 if exp is None else exp
        token = jwt(exp, f"{audience}|{pod}|{len(self.tokens)}", audience)
        self.tokens[token] = (audience, pod, namespace)
        return token

    def review_token(self, token, audience):
        self.reviews.append((token, audience))
        issued = self.tokens.get(token)
        if issued is None or issued[0] != audience:
            return Review(authenticated=False)
        aud, pod, namespace = issued
        return Review(True, (aud,), f"system:serviceaccount:{namespace}:default", {POD_EXTRA: (pod,)})

    def patch_job_status(self, namespace, name, uid, status):
        with self.lock:
            if self.fail_next_patch:
                self.fail_next_patch = False
                raise RuntimeError("apiserver hiccup")
            self.patches.append((namespace, name, uid, status))
        return True


def epoch_body(epoch, epochs=5, attempt=0, **extra):
    event = {"event": "epoch", "epoch": epoch, "epochs": epochs, "metrics": {"val_auc": 0.9},
             "mlflow_run_id": "run1", "attempt": attempt, **extra}  # fmt: skip
    return json.dumps(event).encode()


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


# --------------------------------------------------------------------------- paths and tokens


def test_paths():
    assert ps.parse_path(progress_path("ns", "ddp", "uid-1")) == KEY
    assert KEY.audience == progress_audience("ns", "ddp", "uid-1") == "dmlt.io/progress/ns/ddp/uid-1"
    for bad in (
        "/",
        "/v1/progress/ns/ddp",
        "/v1/progress/NS/ddp/u",
        "/v1/progress/ns/ddp/u/x",
        "/x/ns/ddp/u",
    ):
        assert ps.parse_path(bad) is None


def test_the_verifier_accepts_only_this_jobs_rank0_token():
    kube = FakeProgressKube()
    verifier = ps.TokenVerifier(kube)
    good = kube.issue(KEY.audience, "ddp-0")
    assert verifier.check(good, KEY) is None
    # Another job's audience (or this job's name with another uid): turned away on its face,
    # and, claiming ours, not authenticated for it by the apiserver.
    assert "audience" in verifier.check(kube.issue(progress_audience("ns", "other", "u2"), "other-0"), KEY)
    assert "audience" in verifier.check(kube.issue(progress_audience("ns", "ddp", "old"), "ddp-0"), KEY)
    forged = jwt(time.time() + 60, "forged", KEY.audience)
    assert "not authenticated" in verifier.check(forged, KEY)

    # The right audience, but bound to another Pod, or a ServiceAccount of another namespace.
    assert "rank 0 Pod" in verifier.check(kube.issue(KEY.audience, "ddp-1"), KEY)
    assert "rank 0 Pod" in verifier.check(kube.issue(KEY.audience, "ddpx-0"), KEY)
    assert "namespace" in verifier.check(kube.issue(KEY.audience, "ddp-0", namespace="elsewhere"), KEY)
    reviews = len(kube.reviews)
    assert "expired" in verifier.check(jwt(time.time() - 1, "old", KEY.audience), KEY)
    assert "audience" in verifier.check("garbage", KEY)
    assert len(kube.reviews) == reviews  # neither cost a TokenReview


def test_refusal_requires_the_audience_in_the_answer():
    review = Review(True, ("api",), "system:serviceaccount:ns:default", {POD_EXTRA: ("ddp-0",)})
    assert "audience" in ps.refusal(review, KEY)


def test_verdicts_are_cached_by_token_until_expiry_at_most_ten_minutes():
    kube, clock, wall = FakeProgressKube(), Clock(), Clock()
    verifier = ps.TokenVerifier(kube, clock=clock, wall=wall)
    token = kube.issue(KEY.audience, "ddp-0", exp=wall() + 3600)
    for _ in range(5):
        assert verifier.check(token, KEY) is None
    assert len(kube.reviews) == 1
    clock.t += ps.CACHE_TTL_S + 1
    assert verifier.check(token, KEY) is None
    assert len(kube.reviews) == 2
    # A token that expires in 30 s is trusted for 30 s only.
    short = kube.issue(KEY.audience, "ddp-0", exp=wall() + 30)
    verifier.check(short, KEY)
    clock.t += 31
    verifier.check(short, KEY)
    assert len(kube.reviews) == 4
    # A refusal is remembered briefly, then asked again.
    forged = jwt(wall() + 3600, "forged", KEY.audience)
    verifier.check(forged, KEY)
    verifier.check(forged, KEY)
    assert len(kube.reviews) == 5
    clock.t += ps.NEGATIVE_TTL_S + 1
    verifier.check(forged, KEY)
    assert len(kube.reviews) == 6


def test_token_expiry():
    assert ps.token_expiry(jwt(123)) == 123.0
    assert ps.token_expiry(jwt()) is None
    assert ps.token_expiry("not-a-jwt") is None
    assert ps.token_expiry("a.!!!.c") is None


# --------------------------------------------------------------------------- reports


def test_reports_are_cleaned_like_log_lines():
    report = ps.parse_report(epoch_body(7, 5, metrics={"val_auc": 0.91234567, "nan": None, "bad key": 1}))
    assert (report.attempt, report.epoch) == (0, 7)
    assert report.status == {
        "progress": {"epoch": 5, "epochs": 5, "summary": "5/5", "percent": 100},
        "metrics": {"val_auc": 0.912346},
        "mlflowRunId": "run1",
    }
    for bad in (b"", b"{", b'{"event": "finished", "status": "completed"}', epoch_body(1, attempt=-1),
                epoch_body("x"), b"\xff\xfe"):  # fmt: skip
        assert ps.parse_report(bad) is None


def test_stale_epochs_are_refused_and_a_new_attempt_starts_over():
    writer = ps.ProgressWriter(FakeProgressKube())
    assert writer.offer(KEY, ps.parse_report(epoch_body(3)))
    assert not writer.offer(KEY, ps.parse_report(epoch_body(2)))
    assert not writer.offer(KEY, ps.parse_report(epoch_body(3)))
    assert writer.offer(KEY, ps.parse_report(epoch_body(1, attempt=1)))  # resumed from a checkpoint
    assert not writer.offer(KEY, ps.parse_report(epoch_body(9, attempt=0)))
    # Another instance of the job (its uid) is another key.
    assert writer.offer(ps.JobKey("ns", "ddp", "uid-2"), ps.parse_report(epoch_body(1)))


def test_one_write_per_job_per_half_second_latest_wins():
    kube, clock = FakeProgressKube(), Clock()
    writer = ps.ProgressWriter(kube, clock=clock)
    other = ps.JobKey("ns", "other", "uid-9")
    writer.offer(KEY, ps.parse_report(epoch_body(1)))
    writer.offer(other, ps.parse_report(epoch_body(1)))
    ready, wait = writer.due()
    assert [k for k, _ in ready] == [KEY, other] and wait is None
    for key, report in ready:
        writer.write(key, report)
    for epoch in (2, 3, 4):
        writer.offer(KEY, ps.parse_report(epoch_body(epoch)))
        clock.t += 0.1
    ready, wait = writer.due()
    assert ready == [] and wait == pytest.approx(0.2)
    clock.t += 0.2
    ready, wait = writer.due()
    assert [(k, r.epoch) for k, r in ready] == [(KEY, 4)]  # 2 and 3 were never written
    for key, report in ready:
        writer.write(key, report)
    assert [p[3]["progress"]["epoch"] for p in kube.patches] == [1, 1, 4]
    assert writer.due() == ([], None)


def test_a_failed_write_is_retried_a_few_times():
    kube, clock = FakeProgressKube(), Clock()
    writer = ps.ProgressWriter(kube, clock=clock)
    writer.offer(KEY, ps.parse_report(epoch_body(1)))
    kube.fail_next_patch = True
    ((key, report),) = writer.due()[0]
    writer.write(key, report)
    assert kube.patches == []
    clock.t += 0.5
    ((key, report),) = writer.due()[0]
    writer.write(key, report)
    assert len(kube.patches) == 1


def test_the_receiver_answers():
    kube = FakeProgressKube()
    receiver = ps.Receiver(ps.TokenVerifier(kube), ps.ProgressWriter(kube))
    path = progress_path(*("ns", "ddp", "uid-1"))
    token = kube.issue(KEY.audience, "ddp-0")
    assert receiver.handle("/nope", f"Bearer {token}", epoch_body(1)).code == 404
    assert receiver.handle(path, None, epoch_body(1)).code == 401
    assert receiver.handle(path, "Basic abc", epoch_body(1)).code == 401
    assert receiver.handle(path, "Bearer garbage", epoch_body(1)).code == 403
    assert receiver.handle(path, f"Bearer {token}", b"{}").code == 400
    assert receiver.handle(path, f"Bearer {token}", epoch_body(2)).code == 202
    assert receiver.handle(path, f"Bearer {token}", epoch_body(1)).code == 409

    class Down(FakeProgressKube):
        def review_token(self, token, audience):
            raise ConnectionError("apiserver down")

    down = ps.Receiver(ps.TokenVerifier(Down()), receiver.writer)
    assert down.handle(path, f"Bearer {jwt(time.time() + 60, 'x', KEY.audience)}", b"").code == 503


# --------------------------------------------------------------------------- over HTTPS


@pytest.fixture
def served(tmp_path):
    tls = make_tls(tmp_path / "tls")
    kube = FakeProgressKube()
    running = ps.serve(kube, 0, ps.tls_context(tls.cert, tls.key), host="127.0.0.1")
    yield kube, running, tls
    running.stop()


def wait_for(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_trainer_pushes_its_latest_epoch_over_https(served, tmp_path):
    kube, running, tls = served
    token_file = tmp_path / "token"
    token_file.write_text(kube.issue(KEY.audience, "ddp-0"))
    url = f"https://localhost:{running.port}{progress_path('ns', 'ddp', 'uid-1')}"
    pusher = ProgressPusher(https_sender(url, tls.ca_pem), str(token_file), attempt=0)
    pusher.submit(json.loads(epoch_body(1)))
    wait_for(lambda: len(kube.patches) == 1)
    # The kubelet rotates the token: the next push reads the new one.
    token_file.write_text(kube.issue(KEY.audience, "ddp-0"))
    pusher.submit(json.loads(epoch_body(2)))
    wait_for(lambda: len(kube.patches) == 2)
    pusher.close()
    assert [p[3]["progress"]["epoch"] for p in kube.patches] == [1, 2]
    assert kube.patches[0][:3] == ("ns", "ddp", "uid-1")
    assert len({t for t, _ in kube.reviews}) == 2 and pusher.failed == 0


def test_a_push_to_a_refusing_or_absent_receiver_never_blocks(served, tmp_path):
    kube, running, tls = served
    token_file = tmp_path / "token"
    token_file.write_text("garbage")
    url = f"https://localhost:{running.port}{progress_path('ns', 'ddp', 'uid-1')}"
    pusher = ProgressPusher(https_sender(url, tls.ca_pem), str(token_file))
    started = time.monotonic()
    for epoch in range(1, 50):
        pusher.submit({"event": "epoch", "epoch": epoch, "epochs": 50})
    assert time.monotonic() - started < 0.5
    pusher.close()
    assert pusher.failed >= 1 and kube.patches == []
    # Nothing listening, and a CA that does not match: failures, counted, never raised.
    for sender in (
        https_sender("https://127.0.0.1:9/x", tls.ca_pem),
        https_sender(url, make_tls(tmp_path / "o").ca_pem),
    ):
        lost = ProgressPusher(sender, str(token_file))
        lost.submit({"event": "epoch", "epoch": 1})
        lost.close()
        assert lost.failed == 1


def test_the_pusher_comes_from_the_pods_env(tmp_path):
    assert ProgressPusher.from_env({}) is None
    env = {
        "DMLT_PROGRESS_URL": "https://x/v1",
        "DMLT_PROGRESS_TOKEN_FILE": str(tmp_path / "t"),
        "DMLT_ATTEMPT": "2",
    }
    pusher = ProgressPusher.from_env(env)
    assert pusher is not None and pusher.attempt == 2
    pusher.close(0)
    assert ProgressPusher.from_env({**env, "DMLT_PROGRESS_CA": "not a pem"}) is None


def test_the_fake_and_the_real_api_implement_the_receivers_protocol():
    from dmlt_operator.core.kube import ProgressApi

    from tests.helpers.protocols import assert_implements, protocol_members

    assert protocol_members(ps.ProgressKube) == ["patch_job_status", "review_token"]
    assert_implements(ProgressApi, ps.ProgressKube)
    assert_implements(FakeProgressKube, ps.ProgressKube)


def test_main_starts_the_receiver_on_any_replica_only_when_configured(tmp_path, monkeypatch):
    from dmlt_operator import main
    from dmlt_operator.core.config import OperatorConfig, ProgressConfig

    assert main.start_progress_receiver(OperatorConfig()) is None
    tls = make_tls(tmp_path / "tls")
    monkeypatch.setattr(main, "load_config", lambda: None)
    monkeypatch.setattr(main, "ProgressApi", FakeProgressKube)
    cfg = OperatorConfig(progress=ProgressConfig(url="https://rx:8443", port=1, tls_dir=str(tls.dir)))
    monkeypatch.setattr(ps, "serve", lambda kube, port, tls_ctx: (type(kube).__name__, port))
    assert main.start_progress_receiver(cfg) == ("FakeProgressKube", 1)
