"""Data capture as SageMaker's DataCaptureConfig does it, into the local S3 store.

A sampled share of requests (``InitialSamplingPercentage``) is written as JSON Lines, one record per request:
``captureData.endpointInput`` / ``endpointOutput`` (``observedContentType``, ``mode``, ``data``, ``encoding``),
``eventMetadata`` (``eventId``, ``inferenceTime``, and ``inferenceId`` when the caller sent one) and
``eventVersion`` "0". Content types listed in CaptureContentTypeHeader are kept as text (encoding CSV or JSON);
everything else, images included, is base64 (encoding BASE64), which is also the service's default.

Objects land under SageMaker's key layout: ``<destination>/<endpoint>/<variant>/yyyy/mm/dd/hh/`` with file names
``<minute>-<second>-<millisecond>-<uuid>.jsonl``. Records are buffered and written by a background thread every
``flush_interval`` seconds, each file atomically, so a reader never sees half a file and requests never wait for
the disk.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlops import store

VARIANT = "AllTraffic"
# The endpoint template's CaptureContentTypeHeader (tests/infra checks they agree).
CSV_CONTENT_TYPES = ("text/csv",)
JSON_CONTENT_TYPES = ("application/json",)


@dataclass(frozen=True)
class CaptureConfig:
    """DataCaptureConfig's fields, for one endpoint."""

    destination: str  # DestinationS3Uri: s3://bucket/prefix
    endpoint: str
    sampling_percentage: int
    variant: str = VARIANT
    capture_input: bool = True
    capture_output: bool = True

    def __post_init__(self) -> None:
        store.parse_s3_uri(self.destination)
        if not 0 <= int(self.sampling_percentage) <= 100:
            raise ValueError(f"sampling percentage {self.sampling_percentage} is outside 0..100")

    @property
    def prefix_uri(self) -> str:
        """Where this endpoint's captures go: ``<destination>/<endpoint>/<variant>/``."""
        return f"{self.destination.rstrip('/')}/{self.endpoint}/{self.variant}/"

    def to_json(self) -> dict[str, Any]:
        return {"DestinationS3Uri": self.destination, "EndpointName": self.endpoint,
                "InitialSamplingPercentage": self.sampling_percentage, "VariantName": self.variant,
                "CaptureOptions": [{"CaptureMode": m} for m, on in (("Input", self.capture_input),
                                                                     ("Output", self.capture_output)) if on]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaptureConfig:
        modes = {o["CaptureMode"] for o in data.get("CaptureOptions") or [{"CaptureMode": "Input"},
                                                                          {"CaptureMode": "Output"}]}
        return cls(destination=data["DestinationS3Uri"], endpoint=data["EndpointName"],
                   sampling_percentage=int(data["InitialSamplingPercentage"]),
                   variant=data.get("VariantName", VARIANT), capture_input="Input" in modes,
                   capture_output="Output" in modes)


def encode(body: bytes, content_type: str | None) -> tuple[str, str]:
    """(data, encoding) the way the service stores a body of this content type."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media in CSV_CONTENT_TYPES or media in JSON_CONTENT_TYPES:
        try:
            return body.decode("utf-8"), "CSV" if media in CSV_CONTENT_TYPES else "JSON"
        except UnicodeDecodeError:
            pass  # not text after all: keep it losslessly
    return base64.b64encode(body).decode("ascii"), "BASE64"


def inference_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_record(config: CaptureConfig, moment: datetime, request: bytes, request_type: str | None,
                response: bytes, response_type: str | None, inference_id: str | None = None) -> dict[str, Any]:
    capture: dict[str, Any] = {}
    if config.capture_input:
        data, encoding = encode(request, request_type)
        capture["endpointInput"] = {"observedContentType": request_type or "", "mode": "INPUT", "data": data,
                                    "encoding": encoding}
    if config.capture_output:
        data, encoding = encode(response, response_type)
        capture["endpointOutput"] = {"observedContentType": response_type or "", "mode": "OUTPUT", "data": data,
                                     "encoding": encoding}
    metadata = {"eventId": str(uuid.uuid4()), "inferenceTime": inference_time(moment)}
    if inference_id:
        metadata["inferenceId"] = inference_id
    return {"captureData": capture, "eventMetadata": metadata, "eventVersion": "0"}


def object_uri(config: CaptureConfig, moment: datetime) -> str:
    """SageMaker's key for a capture file started at ``moment``: hour folders, minute-second-ms-uuid name."""
    moment = moment.astimezone(UTC)
    return (f"{config.prefix_uri}{moment:%Y/%m/%d/%H}/"
            f"{moment:%M-%S}-{moment.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl")


class CaptureWriter:
    """Samples requests and writes them in the background; one per server process."""

    def __init__(self, config: CaptureConfig, flush_interval: float = 1.0, max_pending: int = 2000,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self._rng = rng or random.Random()
        self._pending: list[tuple[datetime, bytes, str | None, bytes, str | None, str | None]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.written: list[str] = []
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def offer(self, request: bytes, request_type: str | None, response: bytes, response_type: str | None,
              inference_id: str | None = None) -> bool:
        """Keep this exchange if the sample says so (cheap: formatting happens in the writer thread)."""
        percentage = self.config.sampling_percentage
        if percentage <= 0 or (percentage < 100 and self._rng.random() * 100 >= percentage):
            return False
        with self._lock:
            if len(self._pending) >= self.max_pending:  # the disk cannot keep up: drop, as the service does
                self.dropped += 1
                return False
            self._pending.append((datetime.now(UTC), request, request_type, response, response_type, inference_id))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="data-capture", daemon=True)
                self._thread.start()
        return True

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self.flush()

    def flush(self) -> list[str]:
        """Write everything pending, one file per hour folder; returns the URIs written."""
        with self._lock:
            pending, self._pending = self._pending, []
        by_hour: dict[str, list[str]] = {}
        first: dict[str, datetime] = {}
        for moment, request, request_type, response, response_type, inference_id in pending:
            hour = f"{moment:%Y%m%d%H}"
            first.setdefault(hour, moment)
            record = make_record(self.config, moment, request, request_type, response, response_type, inference_id)
            by_hour.setdefault(hour, []).append(json.dumps(record, separators=(",", ":")))
        uris = []
        for hour, lines in by_hour.items():
            uri = object_uri(self.config, first[hour])
            store.put_bytes(uri, ("\n".join(lines) + "\n").encode("utf-8"))
            uris.append(uri)
        self.written += uris
        return uris

    def close(self) -> None:
        """Stop the writer thread and write what is left (a graceful shutdown loses nothing)."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
