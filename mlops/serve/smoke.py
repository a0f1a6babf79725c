"""The smoke test of a deployed endpoint: real MNIST test digits, in the forms clients send, must come back right.

Each digit goes three ways: raw 28x28 pixels (application/json), upscaled colour (a 112x112 RGB PNG) and dark ink
on light paper (an inverted 56x56 PNG, the way people draw digits). Any wrong class, any error, or a p99 latency
above the threshold fails the test. The digits are unambiguous ones from the shipped test set (indices in
``SMOKE_DIGITS``, chosen by ``scripts/select_smoke_digits.py``): a smoke test proves the deployment serves a working
model end to end; accuracy is the pipeline's Evaluate step's business.

Transports: :class:`HttpTransport` (the local endpoint) and :class:`SageMakerTransport` (InvokeEndpoint).
"""

from __future__ import annotations

import http.client
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

MNIST_DIR = Path(__file__).resolve().parents[2] / "data" / "mnist"
# Two per class from t10k, unambiguous in all three forms (see scripts/select_smoke_digits.py).
SMOKE_DIGITS: tuple[int, ...] = (13, 71, 2, 5, 35, 82, 76, 1172, 4, 19, 127, 129, 21, 88, 0, 34, 134, 374, 481, 1005)
FORMS = ("raw 28x28", "upscaled colour", "dark-on-light")


class SmokeTestError(Exception):
    """The endpoint cannot be smoke-tested at all (not found, not InService, unreachable)."""


@dataclass(frozen=True)
class Probe:
    index: int  # in the t10k test set
    label: int
    form: str
    body: bytes
    content_type: str


@dataclass
class Answer:
    status: int
    body: bytes
    latency_s: float
    version: str | None = None  # the model version that answered, when the endpoint says


@dataclass
class SmokeResult:
    total: int
    right: int
    max_p99_ms: float
    latencies_ms: list[float]
    failures: list[str] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 50)) if self.latencies_ms else float("nan")

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else float("nan")

    @property
    def latency_ok(self) -> bool:
        return bool(self.latencies_ms) and self.p99_ms <= self.max_p99_ms

    @property
    def passed(self) -> bool:
        return self.right == self.total and not self.failures and self.latency_ok

    @property
    def summary(self) -> str:
        text = (f"{self.right}/{self.total} right, p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms "
                f"(limit {self.max_p99_ms:g} ms)")
        if not self.latency_ok:
            text += ": p99 over the limit"
        if self.failures:
            text += f"; {len(self.failures)} failed, first: {self.failures[0]}"
        return text


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def render(image: np.ndarray, form: str) -> tuple[bytes, str]:
    """One digit as a request body in one of the FORMS."""
    from PIL import Image

    if form == "raw 28x28":
        return json.dumps(image.astype(int).tolist()).encode(), "application/json"
    if form == "upscaled colour":
        big = np.asarray(Image.fromarray(image).resize((112, 112), Image.Resampling.BILINEAR), dtype=np.float32)
        ink = big / 255.0  # amber ink on a dark blue background
        colour = np.stack([30 + 225 * ink, 20 + 170 * ink, 60 - 60 * ink], axis=-1)
        return _png(np.clip(colour, 0, 255).astype(np.uint8)), "image/png"
    if form == "dark-on-light":
        big = Image.fromarray(image).resize((56, 56), Image.Resampling.BILINEAR)
        return _png(255 - np.asarray(big, dtype=np.uint8)), "image/png"
    raise ValueError(f"unknown form {form!r}; expected one of {', '.join(FORMS)}")


def probes(indices: tuple[int, ...] = SMOKE_DIGITS, forms: tuple[str, ...] = FORMS) -> list[Probe]:
    from training.datasets import read_idx

    images = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    found = []
    for index in indices:
        image = np.asarray(images[index], dtype=np.uint8)
        for form in forms:
            body, content_type = render(image, form)
            found.append(Probe(int(index), int(labels[index]), form, body, content_type))
    return found


class HttpTransport:
    """POST /invocations over one keep-alive connection (what a local client does)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        self.path = parts.path or "/invocations"
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
        self.url = url

    def __call__(self, probe: Probe) -> Answer:
        start = time.perf_counter()
        try:
            self.conn.request("POST", self.path, body=probe.body,
                              headers={"Content-Type": probe.content_type, "Accept": "application/json"})
            response = self.conn.getresponse()
            body = response.read()
        except OSError as exc:
            self.conn.close()
            raise SmokeTestError(f"cannot reach {self.url}: {exc}") from exc
        return Answer(response.status, body, time.perf_counter() - start, response.getheader("X-Mlops-Model-Version"))

    def close(self) -> None:
        self.conn.close()


class SageMakerTransport:
    """InvokeEndpoint through boto3's sagemaker-runtime client."""

    def __init__(self, runtime: Any, endpoint_name: str) -> None:
        self.runtime = runtime
        self.endpoint_name = endpoint_name

    def __call__(self, probe: Probe) -> Answer:
        from botocore.exceptions import ClientError

        start = time.perf_counter()
        try:
            response = self.runtime.invoke_endpoint(EndpointName=self.endpoint_name, ContentType=probe.content_type,
                                                    Accept="application/json", Body=probe.body)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = int(exc.response.get("OriginalStatusCode")
                         or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 500)
            return Answer(status, json.dumps(error).encode(), time.perf_counter() - start)
        body = response["Body"].read()
        return Answer(200, body, time.perf_counter() - start)

    def close(self) -> None:
        pass


def run(send: Callable[[Probe], Answer], max_p99_ms: float, expected_version: str | None = None,
        probe_list: list[Probe] | None = None) -> SmokeResult:
    """Send every probe; collect wrong answers, errors and latencies."""
    probe_list = probe_list if probe_list is not None else probes()
    result = SmokeResult(total=len(probe_list), right=0, max_p99_ms=max_p99_ms, latencies_ms=[])
    for probe in probe_list:
        answer = send(probe)
        result.latencies_ms.append(1000 * answer.latency_s)
        what = f"digit #{probe.index} ({probe.label}, {probe.form})"
        if answer.version:
            result.versions.add(answer.version)
            if expected_version is not None and answer.version != str(expected_version):
                result.failures.append(f"{what} was answered by version {answer.version}, expected "
                                       f"{expected_version} (did a deployment run during the test?)")
                continue
        if answer.status != 200:
            result.failures.append(f"{what} -> HTTP {answer.status}: {answer.body[:200].decode(errors='replace')}")
            continue
        try:
            predicted = int(json.loads(answer.body)["predicted_class"])
        except (ValueError, KeyError, TypeError):
            result.failures.append(f"{what} -> unreadable answer {answer.body[:200]!r}")
            continue
        if predicted == probe.label:
            result.right += 1
        else:
            result.failures.append(f"{what} -> {predicted}")
    return result
