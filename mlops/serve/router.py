"""The front of a local stage endpoint: one public port that forwards to the live version's model server.

SageMaker clients talk to an endpoint, never to a container: the service routes each request to a fleet and
shifts traffic between fleets during a blue/green update. The router plays that part on this machine. It
answers GET /ping and POST /invocations on the endpoint's port, forwards each request to the model server named
in ``routes.json`` (which :mod:`mlops.serve.bluegreen` replaces atomically to switch traffic), and captures a
sample of requests and responses like DataCaptureConfig (:mod:`mlops.serve.capture`).

No request fails because of a swap: every request reads the routes file's identity (one stat) and, when the
connection to a server breaks before any answer came back (the old server closing an idle keep-alive connection
while it drains, or its listener already gone), it is sent again to whatever server the routes now name.
Inference has no side effects, so a resend is safe. Responses carry ``X-Amzn-Invoked-Production-Variant`` as the
service's do, and ``X-Mlops-Model-Version`` (the registry version that answered).

Run by ``mlops deploy --target local``, or ``python -m mlops.serve.router --config ENDPOINT/router.json --port P``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from inference.inference import MAX_BODY_BYTES
from mlops.serve.capture import CaptureConfig, CaptureWriter

log = logging.getLogger("mlops.router")
RESEND_WINDOW_S = 10.0  # how long a request may wait for a server to take it during a swap
BACKEND_TIMEOUT_S = 60.0
DRAIN_FACTOR = 4
VARIANT_HEADER = "X-Amzn-Invoked-Production-Variant"
VERSION_HEADER = "X-Mlops-Model-Version"
FORWARDED_HEADERS = ("CONTENT_TYPE", "HTTP_ACCEPT", "HTTP_X_AMZN_SAGEMAKER_INFERENCE_ID",
                     "HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES")
RESENDABLE = (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine, BrokenPipeError)


class RouteTable:
    """``routes.json`` as last written: re-read whenever the file's identity changes (one stat per request)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._identity: tuple[int, int] | None = None
        self._route: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def current(self) -> dict[str, Any] | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        identity = (stat.st_ino, stat.st_mtime_ns)
        if identity != self._identity:
            with self._lock:
                try:
                    route = json.loads(self.path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    return self._route  # mid-replacement on an odd filesystem: keep the last good route
                self._route, self._identity = route, identity
        return self._route


class Backends:
    """One keep-alive connection per (thread, server): the router's threads never share a socket."""

    def __init__(self, timeout: float = BACKEND_TIMEOUT_S) -> None:
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self, url: str) -> http.client.HTTPConnection:
        pool = self._local.__dict__.setdefault("pool", {})
        conn = pool.get(url)
        if conn is None:
            parts = urlsplit(url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
            pool[url] = conn
        return conn

    def drop(self, url: str) -> None:
        conn = self._local.__dict__.get("pool", {}).pop(url, None)
        if conn is not None:
            conn.close()

    def send(self, url: str, method: str, path: str, body: bytes | None,
             headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = self._connection(url)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except BaseException:
            self.drop(url)
            raise
        if response.will_close:
            self.drop(url)
        return response.status, response.getheaders(), data


def _json_error(start_response: Callable, status: int, message: str) -> list[bytes]:
    body = json.dumps({"error": message, "status": status}).encode()
    start_response(f"{status} {http.client.responses.get(status, 'Error')}",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _read_body(environ: dict[str, Any], limit: int) -> bytes | None:
    """The request body, or None when it exceeds ``limit`` (a moderately larger one is read and dropped, so the
    client is reading when the 413 arrives instead of getting a reset)."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        size = int(length)
        if size > limit:
            budget = min(size, DRAIN_FACTOR * limit) if size <= DRAIN_FACTOR * limit else 0
            while budget > 0 and (chunk := stream.read(min(1 << 16, budget))):
                budget -= len(chunk)
            return None
        return stream.read(size)
    body = stream.read(limit + 1)  # chunked: gunicorn ends the stream where the body ends
    return None if len(body) > limit else body


class Router:
    """The WSGI app of one router worker."""

    def __init__(self, config: dict[str, Any], resend_window: float = RESEND_WINDOW_S) -> None:
        self.name = config["EndpointName"]
        self.routes = RouteTable(config["RoutesFile"])
        self.backends = Backends()
        self.resend_window = resend_window
        capture = config.get("DataCapture")
        self.capture = CaptureWriter(CaptureConfig.from_json(capture)) if capture else None
        self.variant = (capture or {}).get("VariantName", "AllTraffic")

    def forward(self, method: str, path: str, body: bytes | None,
                headers: dict[str, str]) -> tuple[dict[str, Any], int, list[tuple[str, str]], bytes]:
        deadline = time.monotonic() + self.resend_window
        while True:
            route = self.routes.current()
            if route is None or not route.get("Backend"):
                raise LookupError(f"endpoint {self.name} has no model version serving")
            try:
                return (route, *self.backends.send(route["Backend"], method, path, body, headers))
            except RESENDABLE as exc:
                if time.monotonic() >= deadline:
                    raise ConnectionError(f"no model server took the request within {self.resend_window:.0f} s "
                                          f"(last: {route['Backend']}: {exc})") from exc
                time.sleep(0.02)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO") or "/"
        if environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        body = None
        if method in ("POST", "PUT"):
            body = _read_body(environ, MAX_BODY_BYTES)
            if body is None:
                return _json_error(start_response, 413, f"body exceeds the limit of {MAX_BODY_BYTES} bytes")
        headers = {name[5:].replace("_", "-").title() if name.startswith("HTTP_") else "Content-Type": environ[name]
                   for name in FORWARDED_HEADERS if environ.get(name)}
        try:
            route, status, response_headers, data = self.forward(method, path, body, headers)
        except LookupError as exc:
            return _json_error(start_response, 503, str(exc))
        except ConnectionError as exc:
            log.warning("%s %s: %s", method, path, exc)
            return _json_error(start_response, 502, str(exc))
        except TimeoutError as exc:
            return _json_error(start_response, 504, f"the model server did not answer in time: {exc}")
        content_type = next((v for k, v in response_headers if k.lower() == "content-type"), "application/json")
        if self.capture is not None and status == 200 and path.split("?")[0].rstrip("/") == "/invocations":
            self.capture.offer(body or b"", headers.get("Content-Type"), data, content_type,
                               headers.get("X-Amzn-Sagemaker-Inference-Id"))
        start_response(f"{status} {http.client.responses.get(status, '')}".strip(), [
            ("Content-Type", content_type), ("Content-Length", str(len(data))),
            (VARIANT_HEADER, self.variant), (VERSION_HEADER, str(route.get("Version", ""))),
        ])
        return [data]

    def close(self) -> None:
        if self.capture is not None:
            self.capture.close()


def serve(config_path: str | os.PathLike[str], host: str, port: int, workers: int = 2, connections: int = 8,
          pidfile: str | None = None, log_level: str = "warning") -> None:
    """Run the router with gunicorn (gthread, keep-alive) in the foreground until SIGINT/SIGTERM."""
    from gunicorn.app.base import BaseApplication

    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    apps: list[Router] = []

    def worker_exit(server: Any, worker: Any) -> None:  # graceful stop: write the captures still buffered
        for app in apps:
            app.close()

    class RouterApplication(BaseApplication):
        def load_config(self) -> None:
            settings = {"bind": f"{host}:{port}", "workers": workers, "worker_class": "gthread",
                        "threads": connections, "timeout": int(BACKEND_TIMEOUT_S) + 10, "graceful_timeout": 20,
                        "keepalive": 5, "backlog": 2048, "loglevel": log_level, "errorlog": "-", "pidfile": pidfile,
                        "proc_name": f"mlops-router:{config['EndpointName']}:{port}", "worker_exit": worker_exit}
            for key, value in settings.items():
                if value is not None:
                    self.cfg.set(key, value)

        def load(self) -> Router:
            app = Router(config)
            apps.append(app)
            return app

    RouterApplication().run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the endpoint's router.json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8, help="connection threads per worker")
    parser.add_argument("--pidfile", default=None)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    try:
        serve(args.config, args.host, args.port, args.workers, args.connections, args.pidfile, args.log_level)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
