"""The trainer's two report channels as real processes (issue 15, slices 4–5): torchrun ranks
leave the `finished` event in their termination log (one per Pod: local rank 0), and rank 0
pushes every epoch to an HTTPS receiver with the token file's current token."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from dmlt_operator.trainingjob import progress_server as ps

from tests.helpers.cli import cli_env, run_cli
from tests.helpers.tls import make_tls

pytestmark = pytest.mark.integration


class _Recorder(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((self.path, self.headers.get("Authorization"), json.loads(body)))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_ranks_leave_their_result_and_rank0_pushes_its_epochs(workdir, tmp_path):
    tls = make_tls(tmp_path / "tls")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen = []
    server.socket = ps.tls_context(tls.cert, tls.key).wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    term = tmp_path / "termination-log"
    env = {
        **cli_env(),
        "DMLT_TERMINATION_LOG": str(term),
        "DMLT_PROGRESS_URL": f"https://localhost:{server.server_address[1]}/v1/progress/ns/tr/uid",
        "DMLT_PROGRESS_TOKEN_FILE": str(token),
        "DMLT_PROGRESS_CA": tls.ca_pem,
        "DMLT_ATTEMPT": "1",
    }
    try:
        proc = run_cli(
            ["--nproc-per-node=2", "--standalone", "--max-restarts=0", "-m", "dmlt_trainer.cli",
             "--run-name", "tr", "--dataset", "synthetic", "--n-samples", "2000", "--epochs", "3",
             "--hidden-dims", "16", "--no-enabled", "--threads", "1", "--batch-size", "128"],
            cwd=workdir, env=env, module="torch.distributed.run",
        )  # fmt: skip
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-3000:]
    finished = json.loads(term.read_text())
    assert finished["event"] == "finished" and finished["rank"] == 0 and finished["status"] == "completed"
    assert len(finished["weights_sha256"]) == 64
    # Every epoch (or at least the last: only the latest waits) from rank 0 alone, with the token.
    assert server.seen, proc.stderr[-2000:]
    assert {(path, auth) for path, auth, _ in server.seen} == {("/v1/progress/ns/tr/uid", "Bearer tok-1")}
    last = server.seen[-1][2]
    assert (last["event"], last["epoch"], last["epochs"], last["attempt"]) == ("epoch", 3, 3, 1)
    epochs = [body["epoch"] for _, _, body in server.seen]
    assert epochs == sorted(set(epochs))
