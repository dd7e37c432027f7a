"""When things happened, as this process's watches saw them: each Pod's creation, first Running
and end (Succeeded or Failed), each job's first phase Running, and each object's deletion (Unix
times)."""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

JOB_LABEL = "dmlt.io/job-name"


class KubeHttp:
    """GET and watch against an apiserver with a bearer token (its certificate is self-signed)."""

    def __init__(self, server: str, token: str) -> None:
        self.server, self.token = server, token
        self._tls = ssl._create_unverified_context()  # noqa: S323 - a throwaway local apiserver

    def _open(self, path: str, timeout: float):
        req = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {self.token}"})
        return urllib.request.urlopen(req, timeout=timeout, context=self._tls)

    def get_text(self, path: str, timeout: float = 30) -> str:
        with self._open(path, timeout) as resp:
            return resp.read().decode()

    def get_json(self, path: str, timeout: float = 60) -> dict:
        return json.loads(self.get_text(path, timeout))

    def watch(self, path: str, resource_version: str, seconds: int = 240) -> Iterator[dict]:
        sep = "&" if "?" in path else "?"
        query = f"{sep}watch=1&resourceVersion={resource_version}&timeoutSeconds={seconds}"
        with self._open(path + query, timeout=seconds + 30) as resp:
            for line in resp:
                if line.strip():
                    yield json.loads(line)


@dataclass
class Timeline:
    """First-seen times by object name; guarded by `lock`."""

    pod_created: dict[str, float] = field(default_factory=dict)
    pod_running: dict[str, float] = field(default_factory=dict)
    pod_job: dict[str, str] = field(default_factory=dict)
    pod_gone: dict[str, float] = field(default_factory=dict)
    pod_finished: dict[str, float] = field(default_factory=dict)
    job_seen: dict[str, float] = field(default_factory=dict)
    job_running: dict[str, float] = field(default_factory=dict)
    job_gone: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_pod(self, kind: str, pod: dict, at: float) -> None:
        name = pod["metadata"]["name"]
        with self.lock:
            self.pod_job.setdefault(name, (pod["metadata"].get("labels") or {}).get(JOB_LABEL, ""))
            _record(kind, pod, at, seen=self.pod_created, running=self.pod_running, gone=self.pod_gone)
            if kind != "DELETED" and (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                self.pod_finished.setdefault(name, at)

    def on_job(self, kind: str, job: dict, at: float) -> None:
        with self.lock:
            _record(kind, job, at, seen=self.job_seen, running=self.job_running, gone=self.job_gone)

    def pods_of_jobs(self) -> dict[str, list[str]]:
        with self.lock:
            out: dict[str, list[str]] = {}
            for pod, job in self.pod_job.items():
                out.setdefault(job, []).append(pod)
            return out

    def count(self, what: Callable[[Timeline], int]) -> int:
        with self.lock:
            return what(self)


class Watcher:
    """List-then-watch loops for Pods and TrainingJobs of a namespace, in daemon threads."""

    def __init__(self, http: KubeHttp, namespace: str) -> None:
        self.http, self.timeline = http, Timeline()
        self._stop = threading.Event()
        self._paths = {
            f"/api/v1/namespaces/{namespace}/pods": self.timeline.on_pod,
            f"/apis/dmlt.io/v1alpha1/namespaces/{namespace}/trainingjobs": self.timeline.on_job,
        }
        self.synced = threading.Barrier(len(self._paths) + 1)

    def start(self) -> Watcher:
        for path, handle in self._paths.items():
            threading.Thread(target=self._loop, args=(path, handle), daemon=True).start()
        self.synced.wait(timeout=60)
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self, path: str, handle: Callable[[str, dict, float], None]) -> None:
        first, known = True, set()
        while not self._stop.is_set():
            try:
                listing = self.http.get_json(path)
                now = time.time()
                names = {item["metadata"]["name"] for item in listing["items"]}
                for item in listing["items"]:
                    handle("ADDED", item, now)
                for gone in known - names:  # deleted while the watch was down
                    handle("DELETED", {"metadata": {"name": gone}}, now)
                known = names
                if first:
                    first = False
                    self.synced.wait(timeout=60)
                for event in self.http.watch(path, listing["metadata"]["resourceVersion"]):
                    if self._stop.is_set():
                        return
                    obj, kind = event["object"], event["type"]
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        handle(kind, obj, time.time())
                        name = obj["metadata"]["name"]
                        known.discard(name) if kind == "DELETED" else known.add(name)
                    elif kind == "ERROR":
                        break  # e.g. 410 Gone: list again
            except Exception:
                time.sleep(0.5)


def _record(
    kind: str,
    obj: dict,
    at: float,
    *,
    seen: dict[str, float],
    running: dict[str, float],
    gone: dict[str, float],
) -> None:
    """The first time a watch showed the object, showed it Running, and showed it deleted."""
    name = obj["metadata"]["name"]
    if kind == "DELETED":
        gone.setdefault(name, at)
        return
    seen.setdefault(name, at)
    if (obj.get("status") or {}).get("phase") == "Running":
        running.setdefault(name, at)
