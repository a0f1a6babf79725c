"""The local endpoint over real HTTP (gunicorn + falcon, several workers): each bad input gets its status and a
JSON error, and the server keeps answering /ping and good requests afterwards, even after losing a worker."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from inference import inference as h
from tests.helpers import ROOT, free_port
from tests.helpers.bad_requests import BAD_INPUTS
from tests.helpers.models import digit_png, load_mnist, write_xgboost_model_dir
from tests.helpers.serving import serving


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 30) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        assert response.getheader("Content-Type", "").startswith("application/json"), raw[:200]
        return response.status, json.loads(raw)
    finally:
        conn.close()


def wait_for_ping(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {process.stdout.read().decode()[-2000:]}")
        try:
            if request(port, "GET", "/ping", timeout=2)[0] == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not answer /ping")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_xgboost_model_dir(tmp_path_factory.mktemp("model"))  # ~90% accurate: answers can be checked


@pytest.fixture(scope="module")
def server(model_dir):
    with serving(model_dir, "--workers", "2", "--log-level", "info") as (port, process):
        yield port, process


@pytest.fixture(scope="module")
def digits():
    images, labels = load_mnist("test", 40)
    return [(digit_png(img), int(label)) for img, label in zip(images, labels, strict=True)]


def good_request_works(port: int, digits) -> None:
    status, body = request(port, "GET", "/ping")
    assert status == 200 and body["status"] == "healthy"
    hits = 0
    for png, label in digits[:10]:
        status, body = request(port, "POST", "/invocations", png, {"Content-Type": "image/png"})
        assert status == 200, body
        hits += body["predicted_class"] == label
    assert hits >= 7


def test_ping_and_right_classes(server, digits):
    port, _ = server
    hits = 0
    for png, label in digits:
        status, body = request(port, "POST", "/invocations", png, {"Content-Type": "image/png"})
        assert status == 200
        assert 0.0 <= body["confidence"] <= 1.0 and body["class_name"] == str(body["predicted_class"])
        hits += body["predicted_class"] == label
    assert hits / len(digits) >= 0.8


def test_batch_json_over_http(server, digits):
    port, _ = server
    images = load_mnist("test", 5)[0]
    status, body = request(port, "POST", "/invocations", json.dumps(images.tolist()).encode(),
                           {"Content-Type": "application/json", "Accept": "application/json"})
    assert status == 200 and len(body["predictions"]) == 5


@pytest.mark.parametrize(("name", "body", "content_type", "status"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_status_and_server_stays_up(server, digits, name, body, content_type, status):
    port, _ = server
    headers = {"Content-Type": content_type} if content_type else {}
    got, answer = request(port, "POST", "/invocations", body, headers)
    assert got == status, answer
    assert answer["status"] == status and answer["error"]
    good_request_works(port, digits)


def test_oversized_body_refused_before_it_is_sent(server, digits):
    """A Content-Length over 6 MB is answered 413 from the headers alone."""
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 100000000\r\n\r\n")
        head = sock.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413"), head
    good_request_works(port, digits)


def raw_exchange(port: int, raw: bytes) -> tuple[int, dict]:
    """Send raw bytes, read the whole answer (the server closes after a refusal): (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before everything was sent: the answer is still waiting to be read
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


HUGE_HEADER = b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
MANY_HEADERS = b"GET /ping HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n"
WIDE_HEADERS = (b"GET /ping HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 1000) for i in range(70))
                + b"\r\n")
LONG_URL = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(("name", "raw", "status"), [
    ("a 1 MB header", HUGE_HEADER, 431), ("150 header fields", MANY_HEADERS, 431),
    ("70 KB of headers", WIDE_HEADERS, 431), ("a 9 KB request target", LONG_URL, 414),
    ("not HTTP", b"GARBAGE\r\n\r\n", 400)])
def test_request_heads_are_bounded_and_refused_in_json(server, digits, name, raw, status):
    """httptools itself has no limits: the worker's protocol counts the head as it arrives."""
    port, _ = server
    got, answer = raw_exchange(port, raw)
    assert got == status and answer["status"] == status and answer["error"], name
    good_request_works(port, digits)


def test_a_large_but_reasonable_header_is_served(server, digits):
    port, _ = server
    got, answer = raw_exchange(port, b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 20_000
                               + b"\r\n\r\n")
    assert got == 200 and answer["status"] == "healthy"


def test_chunked_good_request(server, digits):
    port, _ = server
    png = digits[0][0]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/invocations", body=iter([png[:50], png[50:]]), headers={"Content-Type": "image/png"},
                 encode_chunked=True)
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 200, body
    assert body == request(port, "POST", "/invocations", png, {"Content-Type": "image/png"})[1]


def test_chunked_body_over_limit(server, digits):
    port, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    chunks = (b"0" * (1 << 20) for _ in range(7))
    conn.request("POST", "/invocations", body=chunks, headers={"Content-Type": "text/csv"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["status"] == 413
    conn.close()
    good_request_works(port, digits)


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/nope", 404), ("GET", "/invocations", 405),
                                                        ("POST", "/ping", 405)])
def test_unknown_routes_get_json_errors(server, digits, method, path, status):
    port, _ = server
    got, answer = request(port, method, path, b"" if method == "POST" else None)
    assert got == status and answer["status"] == status
    good_request_works(port, digits)


def test_wrong_accept_is_406(server, digits):
    port, _ = server
    got, answer = request(port, "POST", "/invocations", digits[0][0], {"Content-Type": "image/png",
                                                                        "Accept": "text/csv"})
    assert got == 406 and "application/json" in answer["error"]


def test_concurrent_good_and_bad_requests(server, digits):
    port, _ = server
    failures: list[str] = []
    bad = [b for b in BAD_INPUTS if len(b[1]) < 100_000]
    reference = [request(port, "POST", "/invocations", png, {"Content-Type": "image/png"})[1] for png, _ in digits]

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(15):
            if rng.random() < 0.5:
                index = int(rng.integers(len(digits)))
                status, body = request(port, "POST", "/invocations", digits[index][0], {"Content-Type": "image/png"})
                if status != 200 or body != reference[index]:
                    failures.append(f"good request -> {status} {body}")
            else:
                name, body_bytes, content_type, expected = bad[int(rng.integers(len(bad)))]
                status, body = request(port, "POST", "/invocations", body_bytes,
                                       {"Content-Type": content_type} if content_type else {})
                if status != expected:
                    failures.append(f"{name} -> {status}, expected {expected}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures[:5]


def test_a_killed_worker_is_replaced(server, digits):
    import psutil

    port, process = server
    workers = psutil.Process(process.pid).children()
    assert len(workers) == 2
    os.kill(workers[0].pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [c for c in psutil.Process(process.pid).children() if c.status() != psutil.STATUS_ZOMBIE]
        if len(alive) == 2 and workers[0].pid not in {c.pid for c in alive}:
            break
        time.sleep(0.2)
    else:
        pytest.fail("gunicorn did not replace the killed worker")
    for _ in range(4):  # both workers (the new one included) answer
        good_request_works(port, digits)


def test_server_refuses_a_missing_model(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mlops.serve.server", "--model-dir", str(tmp_path), "--port",
                          str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "model_config.json" in out.stderr


def test_max_body_matches_sagemaker():
    assert h.MAX_BODY_BYTES == 6 * 1024 * 1024


@pytest.mark.parametrize("flags", [["--max-batch", "0"], ["--max-batch", "5000"], ["--max-delay-ms", "500"]])
def test_server_refuses_unbounded_batching(model_dir, flags):
    out = subprocess.run([sys.executable, "-m", "mlops.serve.server", "--model-dir", str(model_dir), "--port",
                          str(free_port()), *flags], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 2 and "expected" in out.stderr, out.stderr


def test_batched_server_answers_like_one_request_at_a_time(model_dir, digits):
    """Concurrent clients on a server that batches (max delay 5 ms) get exactly the unbatched answers."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "mlops.serve.server", "--model-dir", str(model_dir), "--port",
                                str(port), "--workers", "1", "--max-batch", "8",
                                "--max-delay-ms", "5"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        wait_for_ping(port, process)
        reference = [request(port, "POST", "/invocations", png, {"Content-Type": "image/png"})[1]
                     for png, _ in digits[:16]]
        failures: list[str] = []

        def client(offset: int) -> None:
            for i in range(16):
                index = (i + offset) % 16
                status, body = request(port, "POST", "/invocations", digits[index][0], {"Content-Type": "image/png"})
                if status != 200 or body != reference[index]:
                    failures.append(f"{index}: {status} {body}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not failures, failures[:3]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_worker_rss_stays_flat_through_the_bad_input_corpus(model_dir, digits):
    """Refusals must not leak: after a warm-up pass, 4 more passes of the corpus grow the worker's RSS < 10%."""
    import psutil

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "mlops.serve.server", "--model-dir", str(model_dir), "--port",
                                str(port), "--workers", "1"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_ping(port, process)
        (worker,) = psutil.Process(process.pid).children()

        def one_pass() -> None:
            for name, body, content_type, status in BAD_INPUTS:
                got, _ = request(port, "POST", "/invocations", body, {"Content-Type": content_type} if content_type
                                 else {})
                assert got == status, name
            good_request_works(port, digits)

        one_pass()
        before = worker.memory_info().rss
        for _ in range(4):
            one_pass()
        after = worker.memory_info().rss
        assert after < before * 1.10, (before, after)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
