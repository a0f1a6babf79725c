"""Data capture records, keys, encodings and sampling, as SageMaker's DataCaptureConfig writes them."""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime

import pytest

from mlops import store
from mlops.serve.capture import CaptureConfig, CaptureWriter, encode, make_record, object_uri

CONFIG = CaptureConfig(destination="s3://mlops-local/data-capture", endpoint="ep-prod", sampling_percentage=100)


def test_encodings_follow_the_content_type_header_lists():
    assert encode(b'{"a": 1}', "application/json; charset=utf-8") == ('{"a": 1}', "JSON")
    assert encode(b"1,2,3", "text/csv") == ("1,2,3", "CSV")
    assert encode(b"\x89PNG...", "image/png") == (base64.b64encode(b"\x89PNG...").decode(), "BASE64")
    assert encode(b"\xff\xfe", "application/json")[1] == "BASE64"  # not text after all: kept losslessly
    assert encode(b"x", None)[1] == "BASE64"  # the service's default


def test_record_and_key_layout():
    moment = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
    record = make_record(CONFIG, moment, b"[1]", "application/json", b'{"p": 1}', "application/json", "id-7")
    assert record["captureData"]["endpointInput"] == {"observedContentType": "application/json", "mode": "INPUT",
                                                      "data": "[1]", "encoding": "JSON"}
    assert record["captureData"]["endpointOutput"]["mode"] == "OUTPUT"
    assert record["eventMetadata"]["inferenceTime"] == "2026-03-04T05:06:07Z"
    assert record["eventMetadata"]["inferenceId"] == "id-7" and record["eventVersion"] == "0"
    uri = object_uri(CONFIG, moment)
    assert uri.startswith("s3://mlops-local/data-capture/ep-prod/AllTraffic/2026/03/04/05/06-07-890-")
    assert uri.endswith(".jsonl")
    input_only = CaptureConfig(CONFIG.destination, CONFIG.endpoint, 100, capture_output=False)
    assert set(make_record(input_only, moment, b"", None, b"", None)["captureData"]) == {"endpointInput"}


@pytest.mark.parametrize(("percentage", "low", "high"), [(0, 0, 0), (20, 150, 250), (100, 1000, 1000)])
def test_sampling_percentage(tmp_path, monkeypatch, percentage, low, high):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    config = CaptureConfig(CONFIG.destination, CONFIG.endpoint, percentage)
    writer = CaptureWriter(config, flush_interval=60, rng=random.Random(0))
    kept = sum(writer.offer(b"[1]", "application/json", b"{}", "application/json") for _ in range(1000))
    writer.close()  # a graceful stop writes what is buffered
    assert low <= kept <= high
    lines = [line for uri in writer.written for line in store.read_bytes(uri).decode().splitlines()]
    assert len(lines) == kept and all(json.loads(line)["eventVersion"] == "0" for line in lines)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="outside 0..100"):
        CaptureConfig("s3://b/p", "e", 101)
    with pytest.raises(ValueError, match="not an s3://"):
        CaptureConfig("/local/path", "e", 10)
