"""The deploy stage's test kit: register real models as versions of the local registry, and steady client load.

``register_model`` puts a model folder's model.tar.gz into the local store and registers it the way the
pipeline's Register step does (tests/helpers/registry.py's request). ``Load`` runs client threads against an
endpoint, each on its own keep-alive connection like a real client, and records every request's outcome, the
version that answered and when: what a blue/green swap must not disturb.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from mlops import store
from mlops.registry import LocalRegistry
from tests.helpers.models import package_model
from tests.helpers.registry import EVAL_URI, EVALUATION, make_request
from training.atomic import atomic_write_json


def register_model(model_dir: Path, group: str, approve: bool = True, tag: str | None = None) -> int:
    """Register ``model_dir`` as the next version of ``group`` (Approved unless told otherwise)."""
    registry = LocalRegistry()
    version_hint = len(registry.list_model_packages(group)) + 1
    uri = f"s3://mlops-local/models/{group}/{tag or version_hint}/model.tar.gz"
    package_model(model_dir, store.s3_uri_to_path(uri))
    if not store.s3_uri_to_path(EVAL_URI).exists():
        atomic_write_json(store.s3_uri_to_path(EVAL_URI), EVALUATION)
    request = make_request(group=group)
    request["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] = uri
    version = registry.create_model_package(request)["ModelPackageVersion"]
    if approve:
        registry.approve(group, version, approver="tester", comment="test model")
    return version


def model_data_path(group: str, version: int) -> Path:
    record = LocalRegistry().describe_model_package(group, version)
    return store.s3_uri_to_path(record["InferenceSpecification"]["Containers"][0]["ModelDataUrl"])


@dataclass
class Outcome:
    start: float  # time.monotonic()
    latency_s: float
    status: int  # 0: the request failed without an HTTP answer
    version: str | None
    error: str | None = None


@dataclass
class Load:
    """``clients`` threads sending ``body`` to ``url`` back to back until stopped (bounded by ``max_seconds``)."""

    url: str
    body: bytes
    content_type: str = "image/png"
    clients: int = 4
    max_seconds: float = 120.0
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]

    def _client(self) -> None:
        host, port = self.url.split("//")[1].split("/")[0].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            start = time.monotonic()
            try:
                conn.request("POST", "/invocations", body=self.body, headers={"Content-Type": self.content_type})
                response = conn.getresponse()
                response.read()
                outcome = Outcome(start, time.monotonic() - start, response.status,
                                  response.getheader("X-Mlops-Model-Version"))
            except OSError as exc:  # a real client would see this as a failed request
                conn.close()
                outcome = Outcome(start, time.monotonic() - start, 0, None, f"{type(exc).__name__}: {exc}")
            with self._lock:
                self.outcomes.append(outcome)
        conn.close()

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def between(self, start: float, end: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.start <= end]

    @property
    def failures(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.status != 200]
